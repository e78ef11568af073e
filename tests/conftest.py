"""Suite-wide set-up: the test process runs gRPC core's socket I/O the way ``python -m service`` does
(``grpc_event_engine_io`` off, service/grpc_io.py), so the servers tests build in-process with
``create_app`` are tested on the production I/O path, not on gRPC's default one. gRPC core reads the
choice once, when grpcio is imported, hence here, before any test module imports ``grpc``."""
from service.grpc_io import choose_grpc_io

choose_grpc_io(False)
