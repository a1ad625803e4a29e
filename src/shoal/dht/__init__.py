"""Kademlia DHT as a sans-IO core: routing table, iterative lookups, signed records."""

from shoal.dht.core import DhtConfig, DhtCore
from shoal.dht.events import BootstrapDone, ContactSeen, GetDone, LookupDone, PutDone
from shoal.dht.lookup import Lookup
from shoal.dht.messages import (
    DHT_MESSAGES,
    FindNode,
    FindValue,
    Nodes,
    Ping,
    Pong,
    Store,
    StoreAck,
    Value,
)
from shoal.dht.records import (
    MAX_PUBLISHERS_PER_KEY,
    MAX_RECORD_TTL_S,
    MAX_STORE_BYTES,
    MAX_STORE_KEYS,
    BadRecordSignature,
    RecordError,
    RecordExpired,
    RecordExpiryTooFar,
    RecordStore,
    RecordTooLarge,
    SignedRecord,
    StaleRecord,
    StoreFull,
    key_for,
)
from shoal.dht.routing import AddResult, RoutingTable

__all__ = [
    "DHT_MESSAGES",
    "MAX_PUBLISHERS_PER_KEY",
    "MAX_RECORD_TTL_S",
    "MAX_STORE_BYTES",
    "MAX_STORE_KEYS",
    "AddResult",
    "BadRecordSignature",
    "BootstrapDone",
    "ContactSeen",
    "DhtConfig",
    "DhtCore",
    "FindNode",
    "FindValue",
    "GetDone",
    "Lookup",
    "LookupDone",
    "Nodes",
    "Ping",
    "Pong",
    "PutDone",
    "RecordError",
    "RecordExpired",
    "RecordExpiryTooFar",
    "RecordStore",
    "RecordTooLarge",
    "RoutingTable",
    "SignedRecord",
    "StaleRecord",
    "Store",
    "StoreAck",
    "StoreFull",
    "Value",
    "key_for",
]
