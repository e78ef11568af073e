"""What every onnxruntime user of a bundle shares (export's parity check and the service's
runtime): the execution provider names and the softmax that turns the model's logits into the
probabilities clients see."""
from __future__ import annotations

import numpy as np

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True, dtype=np.float32)
