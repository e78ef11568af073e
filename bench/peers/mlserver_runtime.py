"""MLServer 1.7 custom runtime serving a textclf bundle (runs in the .peers/mlserver venv).

Written the way MLServer's docs write a custom runtime: an ``MLModel`` subclass whose ``load``
reads ``parameters.uri`` and whose async ``predict`` decodes with MLServer's codecs. Tokenization
runs on the event loop (microseconds per text); onnxruntime, which releases the GIL, runs in
``asyncio.to_thread`` so the event loop keeps accepting requests. With adaptive batching on
(``max_batch_size`` > 1 in model-settings.json) MLServer stacks concurrent requests into one
``predict`` call and splits the outputs again.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_model import BundleModel  # noqa: E402


class TextclfRuntime(MLModel):
    async def load(self) -> bool:
        self._model = BundleModel(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        input_ids, lengths = self._model.encode(texts)
        probabilities = await asyncio.to_thread(self._model.infer, input_ids, lengths)
        labels = [label.decode() for label in self._model.labels_of(probabilities)]
        return InferenceResponse(
            model_name=self.name, model_version=self.version,
            outputs=[NumpyCodec.encode_output("PROBABILITIES", probabilities),
                     StringCodec.encode_output("LABEL", labels)])
