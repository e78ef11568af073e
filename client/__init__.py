"""Python client for the textclf.v1 gRPC API (torch-free)."""
from client.client import (ClassifyResult, ModelInfo, Prediction, RetryPolicy, StreamResult, TextclfClient,
                           channel_options, classify_request, is_transient, retry_service_config)

__all__ = ["ClassifyResult", "ModelInfo", "Prediction", "RetryPolicy", "StreamResult", "TextclfClient",
           "channel_options", "classify_request", "is_transient", "retry_service_config"]
