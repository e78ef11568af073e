"""One recurrent layer as a custom op: packed recurrence in eager, an ONNX RNN/GRU/LSTM node on export.

Why a custom op: the dynamo exporter cannot trace ``pack_padded_sequence``, unrolls plain
``nn.RNN`` with a frozen length, and a padded forward lets the backward direction read the
padding (see docs/export.md). The op is opaque to ``torch.export``; its translation emits one
standard ONNX recurrent node with ``sequence_lens``, which is exactly the packed semantics.

Weights are taken in ONNX layout (built once by :func:`onnx_layer_weights`) so the exported
graph feeds plain initializers into the node: no Slice/Concat left for quantisation to miss.
"""
from __future__ import annotations

import torch
from onnxscript import opset18 as op
from onnxscript import ir
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

OP_NAME = "textclf::recurrent_layer"

# Gate order PyTorch -> ONNX. LSTM: i,f,g,o -> i,o,f,c. GRU: r,z,n -> z,r,h. RNN: one gate.
GATE_ORDER: dict[str, list[int]] = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}
_VF_FUNCTIONS = {"lstm": torch._VF.lstm, "gru": torch._VF.gru, "rnn": torch._VF.rnn_tanh}


def _to_onnx_order(weight: torch.Tensor, cell: str) -> torch.Tensor:
    chunks = weight.chunk(len(GATE_ORDER[cell]), dim=0)
    return torch.cat([chunks[i] for i in GATE_ORDER[cell]], dim=0)


def _to_torch_order(weight: torch.Tensor, cell: str) -> torch.Tensor:
    order = GATE_ORDER[cell]
    chunks = weight.chunk(len(order), dim=0)
    inverse = [order.index(i) for i in range(len(order))]
    return torch.cat([chunks[i] for i in inverse], dim=0)


def onnx_layer_weights(rnn: nn.RNNBase, layer: int, cell: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H) of one layer in ONNX gate order.

    B is concat(Wb, Rb) per direction, as the ONNX spec wants.
    """
    suffixes = [""] + (["_reverse"] if rnn.bidirectional else [])
    ws, rs, bs = [], [], []
    for suffix in suffixes:
        get = lambda kind: getattr(rnn, f"{kind}_l{layer}{suffix}").detach()  # noqa: E731
        ws.append(_to_onnx_order(get("weight_ih"), cell))
        rs.append(_to_onnx_order(get("weight_hh"), cell))
        bs.append(torch.cat([_to_onnx_order(get("bias_ih"), cell), _to_onnx_order(get("bias_hh"), cell)]))
    return torch.stack(ws).contiguous(), torch.stack(rs).contiguous(), torch.stack(bs).contiguous()


@torch.library.custom_op(OP_NAME, mutates_args=())
def recurrent_layer(
    x: torch.Tensor, lengths: torch.Tensor, W: torch.Tensor, R: torch.Tensor, B: torch.Tensor, cell: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B,T,I), lengths (B,) -> outputs (B,T,D*H) zero past lengths, h_n (D,B,H).

    Eager path: the real packed recurrence (same kernels as nn.RNN/GRU/LSTM on a PackedSequence).
    """
    num_dirs, hidden = R.shape[0], R.shape[-1]
    gates = len(GATE_ORDER[cell])
    flat: list[torch.Tensor] = []
    for d in range(num_dirs):
        flat += [
            _to_torch_order(W[d], cell),
            _to_torch_order(R[d], cell),
            _to_torch_order(B[d, : gates * hidden], cell),
            _to_torch_order(B[d, gates * hidden :], cell),
        ]
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    h0 = x.new_zeros(num_dirs, x.shape[0], hidden)
    hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] = (h0, h0.clone()) if cell == "lstm" else h0
    result = _VF_FUNCTIONS[cell](packed.data, packed.batch_sizes, hx, flat, True, 1, 0.0, False, num_dirs == 2)
    out_data, h_n = result[0], result[1]
    out_packed = PackedSequence(out_data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
    outputs, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=x.shape[1])
    return outputs.contiguous(), h_n.index_select(1, packed.unsorted_indices).contiguous()


@recurrent_layer.register_fake
def _(x, lengths, W, R, B, cell):  # noqa: ANN001, ANN202 - shape function for torch.export
    num_dirs, hidden = R.shape[0], R.shape[-1]
    return x.new_empty(x.shape[0], x.shape[1], num_dirs * hidden), x.new_empty(num_dirs, x.shape[0], hidden)


def recurrent_layer_onnx(x, lengths, W, R, B, cell: str):  # noqa: ANN001, ANN201 - onnxscript values
    """ONNX translation: one RNN/GRU/LSTM node with ``sequence_lens`` (ORT wants layout 0: time-major)."""
    num_dirs = W.shape[0] if W.shape is not None else None
    hidden = R.shape[2] if R.shape is not None else None
    if not isinstance(num_dirs, int) or not isinstance(hidden, int):
        raise ValueError("recurrent weights must have static shapes")
    direction = "bidirectional" if num_dirs == 2 else "forward"
    x_tbi = op.Transpose(x, perm=[1, 0, 2])
    seq_lens = op.Cast(lengths, to=ir.DataType.INT32)
    if cell == "lstm":
        y, y_h, _ = op.LSTM(x_tbi, W, R, B, seq_lens, hidden_size=hidden, direction=direction)
    elif cell == "gru":
        y, y_h = op.GRU(
            x_tbi, W, R, B, seq_lens, hidden_size=hidden, direction=direction, linear_before_reset=1
        )
    elif cell == "rnn":
        y, y_h = op.RNN(x_tbi, W, R, B, seq_lens, hidden_size=hidden, direction=direction)
    else:
        raise ValueError(f"unknown cell {cell!r}")
    # Y (T, D, B, H) -> (B, T, D, H) -> (B, T, D*H); Y_h stays (D, B, H) like PyTorch's h_n.
    y_btdh = op.Transpose(y, perm=[2, 0, 1, 3])
    outputs = op.Reshape(y_btdh, op.Constant(value_ints=[0, 0, num_dirs * hidden]))
    return outputs, y_h


def translation_table() -> dict:
    return {torch.ops.textclf.recurrent_layer.default: recurrent_layer_onnx}
