"""Producing records whose header *names* are arbitrary bytes, which no Python client allows.

confluent-kafka encodes header names from ``str`` (a ``bytes`` name is sent as its repr, a lone
surrogate segfaults the producer), but Kafka header names are bytes on the wire and other clients
write non-UTF-8 ones. This helper calls the librdkafka that ships inside the confluent-kafka wheel
through ctypes, with the non-variadic ``rd_kafka_produceva`` API, so tests can feed the agent
exactly the bytes a foreign producer would: a real client, a real broker, no fake.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Sequence

import confluent_kafka

_RD_KAFKA_PRODUCER = 0
_VTYPE_TOPIC = 1
_VTYPE_PARTITION = 3
_VTYPE_VALUE = 4
_VTYPE_KEY = 5
_VTYPE_HEADER = 9


class _Header(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _Mem(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _U(ctypes.Union):
    # rdkafka.h pads the union to 64 bytes (``char _pad[64]``): the array stride depends on it.
    _fields_ = [
        ("cstr", ctypes.c_char_p),
        ("i32", ctypes.c_int32),
        ("mem", _Mem),
        ("header", _Header),
        ("i64", ctypes.c_int64),
        ("_pad", ctypes.c_char * 64),
    ]


class _VU(ctypes.Structure):
    _fields_ = [("vtype", ctypes.c_int), ("u", _U)]


def _library() -> ctypes.CDLL:
    package = os.path.dirname(confluent_kafka.__file__)
    candidates = glob.glob(os.path.join(package, os.pardir, "confluent_kafka.libs", "librdkafka*.so*"))
    if not candidates:
        raise RuntimeError("librdkafka not found beside the confluent-kafka package")
    lib = ctypes.CDLL(candidates[0])
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.POINTER(_VU), ctypes.c_size_t]
    lib.rd_kafka_error_string.restype = ctypes.c_char_p
    lib.rd_kafka_error_string.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


def produce_raw(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, Sequence[tuple[bytes, bytes]]]],
    *,
    partition: int | None = None,
) -> None:
    """Produce ``(key, value, [(header name bytes, header value bytes), ...])`` records in order,
    to ``partition`` when given.

    Header names must not contain NUL (librdkafka takes them as C strings)."""
    lib = _library()
    errbuf = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    for name, value in ((b"bootstrap.servers", bootstrap.encode()), (b"enable.idempotence", b"true")):
        if lib.rd_kafka_conf_set(conf, name, value, errbuf, len(errbuf)) != 0:
            raise RuntimeError(errbuf.value.decode())
    rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errbuf, len(errbuf))
    if not rk:
        raise RuntimeError(errbuf.value.decode())
    try:
        keep: list[object] = []  # buffers must outlive produceva (it copies them)
        for key, value, headers in records:
            vus: list[_VU] = [_VU(_VTYPE_TOPIC, _U(cstr=topic.encode()))]
            if partition is not None:
                vus.append(_VU(_VTYPE_PARTITION, _U(i32=partition)))
            for kind, data in ((_VTYPE_KEY, key), (_VTYPE_VALUE, value)):
                if data is not None:
                    buffer = ctypes.create_string_buffer(data, len(data))
                    keep.append(buffer)
                    vus.append(_VU(kind, _U(mem=_Mem(ctypes.cast(buffer, ctypes.c_void_p), len(data)))))
            for name, header_value in headers:
                if b"\0" in name:
                    raise ValueError("header names are C strings here: no NUL bytes")
                buffer = ctypes.create_string_buffer(header_value, len(header_value))
                keep.append(buffer)
                header = _Header(name, ctypes.cast(buffer, ctypes.c_void_p), len(header_value))
                vus.append(_VU(_VTYPE_HEADER, _U(header=header)))
            array = (_VU * len(vus))(*vus)
            error = lib.rd_kafka_produceva(rk, array, len(vus))
            if error:
                raise RuntimeError(f"produceva failed: {lib.rd_kafka_error_string(error).decode()}")
        if lib.rd_kafka_flush(rk, 30_000) != 0:
            raise RuntimeError("raw producer did not deliver everything within 30 s")
    finally:
        lib.rd_kafka_destroy(rk)
