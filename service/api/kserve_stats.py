"""The core's statistics (service/statistics.py) as a KServe ``ModelStatistics`` message.

Mapping: ``inference_count`` = texts classified, ``execution_count`` = successful requests
(batches are formed below this layer; their sizes are in Prometheus),
``inference_stats.success``/``fail`` = request count and total nanoseconds.
"""
from __future__ import annotations

from service.statistics import Tally
from textclf_protos.inference import grpc_service_pb2 as pb


def statistics_message(name: str, version: int, tally: Tally) -> pb.ModelStatistics:
    duration = pb.StatisticDuration
    return pb.ModelStatistics(
        name=name, version=str(version), last_inference=tally.last_inference_ms,
        inference_count=tally.texts, execution_count=tally.success_count,
        inference_stats=pb.InferStatistics(success=duration(count=tally.success_count, ns=tally.success_ns),
                                           fail=duration(count=tally.fail_count, ns=tally.fail_ns)))
