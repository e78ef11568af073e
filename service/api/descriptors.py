"""One descriptor pool with every service the server exposes, for server reflection.

The KServe v2 stubs live in a private descriptor pool (scripts/gen_protos.py: tritonclient and
MLServer register the same ``inference.*`` names in protobuf's default pool). grpc reflection
reads a single pool, so it gets this merged one: each service's file and its dependencies,
looked up in the private pools first, then in the default pool.
"""
from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from textclf_protos.inference import grpc_service_pb2

PRIVATE_POOLS = (grpc_service_pb2.DESCRIPTOR.pool,)


def _file_of(service_name: str) -> FileDescriptor:
    for pool in (*PRIVATE_POOLS, descriptor_pool.Default()):
        try:
            return pool.FindFileContainingSymbol(service_name)
        except KeyError:
            continue
    raise KeyError(f"no descriptor for service {service_name!r}")


def reflection_pool(service_names: Iterable[str]) -> descriptor_pool.DescriptorPool:
    """A new pool holding the files that define ``service_names`` (and their imports)."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        pool.AddSerializedFile(file.serialized_pb)
        added.add(file.name)

    for name in service_names:
        add(_file_of(name))
    return pool
