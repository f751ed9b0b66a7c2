from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    SOURCE_NETLINK: _ClassVar[Source]
    SOURCE_EBPF: _ClassVar[Source]
    SOURCE_PCAP: _ClassVar[Source]

class Event(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_UNSPECIFIED: _ClassVar[Event]
    EVENT_NEW: _ClassVar[Event]
    EVENT_DESTROY: _ClassVar[Event]
    EVENT_SNAPSHOT: _ClassVar[Event]
    EVENT_RECOVERED: _ClassVar[Event]
SOURCE_UNSPECIFIED: Source
SOURCE_NETLINK: Source
SOURCE_EBPF: Source
SOURCE_PCAP: Source
EVENT_UNSPECIFIED: Event
EVENT_NEW: Event
EVENT_DESTROY: Event
EVENT_SNAPSHOT: Event
EVENT_RECOVERED: Event

class DecisionKey(_message.Message):
    __slots__ = ("protocol", "vip", "vip_port", "endpoint_ip", "endpoint_port", "source", "event")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    VIP_FIELD_NUMBER: _ClassVar[int]
    VIP_PORT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_IP_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_PORT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    vip: str
    vip_port: int
    endpoint_ip: str
    endpoint_port: int
    source: Source
    event: Event
    def __init__(self, protocol: _Optional[str] = ..., vip: _Optional[str] = ..., vip_port: _Optional[int] = ..., endpoint_ip: _Optional[str] = ..., endpoint_port: _Optional[int] = ..., source: _Optional[_Union[Source, str]] = ..., event: _Optional[_Union[Event, str]] = ...) -> None: ...

class DecisionColumns(_message.Message):
    __slots__ = ("keys", "key_index", "time_ns", "client_ip", "client_port", "ct_id", "zone", "orig_packets", "orig_bytes", "reply_packets", "reply_bytes", "duration_ns")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    KEY_INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PORT_FIELD_NUMBER: _ClassVar[int]
    CT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ORIG_PACKETS_FIELD_NUMBER: _ClassVar[int]
    ORIG_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLY_PACKETS_FIELD_NUMBER: _ClassVar[int]
    REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[DecisionKey]
    key_index: _containers.RepeatedScalarFieldContainer[int]
    time_ns: _containers.RepeatedScalarFieldContainer[int]
    client_ip: _containers.RepeatedScalarFieldContainer[str]
    client_port: _containers.RepeatedScalarFieldContainer[int]
    ct_id: _containers.RepeatedScalarFieldContainer[int]
    zone: _containers.RepeatedScalarFieldContainer[int]
    orig_packets: _containers.RepeatedScalarFieldContainer[int]
    orig_bytes: _containers.RepeatedScalarFieldContainer[int]
    reply_packets: _containers.RepeatedScalarFieldContainer[int]
    reply_bytes: _containers.RepeatedScalarFieldContainer[int]
    duration_ns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, keys: _Optional[_Iterable[_Union[DecisionKey, _Mapping]]] = ..., key_index: _Optional[_Iterable[int]] = ..., time_ns: _Optional[_Iterable[int]] = ..., client_ip: _Optional[_Iterable[str]] = ..., client_port: _Optional[_Iterable[int]] = ..., ct_id: _Optional[_Iterable[int]] = ..., zone: _Optional[_Iterable[int]] = ..., orig_packets: _Optional[_Iterable[int]] = ..., orig_bytes: _Optional[_Iterable[int]] = ..., reply_packets: _Optional[_Iterable[int]] = ..., reply_bytes: _Optional[_Iterable[int]] = ..., duration_ns: _Optional[_Iterable[int]] = ...) -> None: ...

class CounterDelta(_message.Message):
    __slots__ = ("window_start_ns", "window_end_ns", "protocol", "vip", "vip_port", "endpoint_ip", "endpoint_port", "connections", "bytes", "packets", "epoch", "total_connections", "total_closed", "total_orig_packets", "total_orig_bytes", "total_reply_packets", "total_reply_bytes", "total_duration_ns", "source")
    WINDOW_START_NS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_NS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    VIP_FIELD_NUMBER: _ClassVar[int]
    VIP_PORT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_IP_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_PORT_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CLOSED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ORIG_PACKETS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ORIG_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REPLY_PACKETS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    window_start_ns: int
    window_end_ns: int
    protocol: str
    vip: str
    vip_port: int
    endpoint_ip: str
    endpoint_port: int
    connections: int
    bytes: int
    packets: int
    epoch: str
    total_connections: int
    total_closed: int
    total_orig_packets: int
    total_orig_bytes: int
    total_reply_packets: int
    total_reply_bytes: int
    total_duration_ns: int
    source: Source
    def __init__(self, window_start_ns: _Optional[int] = ..., window_end_ns: _Optional[int] = ..., protocol: _Optional[str] = ..., vip: _Optional[str] = ..., vip_port: _Optional[int] = ..., endpoint_ip: _Optional[str] = ..., endpoint_port: _Optional[int] = ..., connections: _Optional[int] = ..., bytes: _Optional[int] = ..., packets: _Optional[int] = ..., epoch: _Optional[str] = ..., total_connections: _Optional[int] = ..., total_closed: _Optional[int] = ..., total_orig_packets: _Optional[int] = ..., total_orig_bytes: _Optional[int] = ..., total_reply_packets: _Optional[int] = ..., total_reply_bytes: _Optional[int] = ..., total_duration_ns: _Optional[int] = ..., source: _Optional[_Union[Source, str]] = ...) -> None: ...

class DeclaredEndpoint(_message.Message):
    __slots__ = ("endpoint", "probability", "chain")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    probability: float
    chain: str
    def __init__(self, endpoint: _Optional[str] = ..., probability: _Optional[float] = ..., chain: _Optional[str] = ...) -> None: ...

class ServicePort(_message.Message):
    __slots__ = ("service", "kind", "vip", "port", "protocol", "affinity", "policy", "endpoints", "chain", "scheduler")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VIP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    service: str
    kind: str
    vip: str
    port: int
    protocol: str
    affinity: str
    policy: str
    endpoints: _containers.RepeatedCompositeFieldContainer[DeclaredEndpoint]
    chain: str
    scheduler: str
    def __init__(self, service: _Optional[str] = ..., kind: _Optional[str] = ..., vip: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[str] = ..., affinity: _Optional[str] = ..., policy: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[DeclaredEndpoint, _Mapping]]] = ..., chain: _Optional[str] = ..., scheduler: _Optional[str] = ...) -> None: ...

class RuleSnapshot(_message.Message):
    __slots__ = ("time_ns", "mode", "hash", "services")
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    time_ns: int
    mode: str
    hash: str
    services: _containers.RepeatedCompositeFieldContainer[ServicePort]
    def __init__(self, time_ns: _Optional[int] = ..., mode: _Optional[str] = ..., hash: _Optional[str] = ..., services: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ...) -> None: ...

class LostEvents(_message.Message):
    __slots__ = ("time_ns", "source", "reason", "count", "recovered", "epoch", "total")
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    time_ns: int
    source: Source
    reason: str
    count: int
    recovered: int
    epoch: str
    total: int
    def __init__(self, time_ns: _Optional[int] = ..., source: _Optional[_Union[Source, str]] = ..., reason: _Optional[str] = ..., count: _Optional[int] = ..., recovered: _Optional[int] = ..., epoch: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("agent_id", "boot_id", "seq", "node", "counters", "rules", "lost", "sample_rate", "columns")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    boot_id: str
    seq: int
    node: str
    counters: _containers.RepeatedCompositeFieldContainer[CounterDelta]
    rules: _containers.RepeatedCompositeFieldContainer[RuleSnapshot]
    lost: _containers.RepeatedCompositeFieldContainer[LostEvents]
    sample_rate: int
    columns: DecisionColumns
    def __init__(self, agent_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., seq: _Optional[int] = ..., node: _Optional[str] = ..., counters: _Optional[_Iterable[_Union[CounterDelta, _Mapping]]] = ..., rules: _Optional[_Iterable[_Union[RuleSnapshot, _Mapping]]] = ..., lost: _Optional[_Iterable[_Union[LostEvents, _Mapping]]] = ..., sample_rate: _Optional[int] = ..., columns: _Optional[_Union[DecisionColumns, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("boot_id", "seq", "duplicate")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    seq: int
    duplicate: bool
    def __init__(self, boot_id: _Optional[str] = ..., seq: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...
