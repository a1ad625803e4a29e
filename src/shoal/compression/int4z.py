"""The `int4z` codec: int4's values, entropy-coded on the wire (`entropy.py`).

In memory an int4z payload *is* an int4 payload (same layout, same checks, same
decode); only what the all-reduce streams differs: `entropy.pack` of it, rebuilt with
`entropy.unpack_into` before anything reads it. So int4z trains exactly the model
int4 does, with about a fifth fewer bytes on DiLoCo's pseudo-gradients.
"""

from __future__ import annotations

from shoal.compression.int4 import Int4Codec


class Int4ZCodec(Int4Codec):
    name = "int4z"
    entropy_coded = True
