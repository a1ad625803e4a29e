"""DiLoCo training, torch side (DESIGN.md "Training").

Follow one round through: `data.py` (each peer's shard) -> `model.py` (the demo GPT)
-> `diloco_math.py` (pseudo-gradient, weighted average, outer Nesterov step, hash)
-> `../compression/` (int8 + error feedback on the wire) -> `checkpoint.py`.
`local.py` runs the whole loop in one process: the reference the networked version
must match.
"""
