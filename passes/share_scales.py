"""Make every scale group share one scale and zero point: the same initializers.

Before: Concat(DQ(Q(a, s_a, z_a)), DQ(Q(b, s_b, z_b))) -> y; DQ(Q(y, s_y, z_y))
After:  every Q/DQ of a, b and y reads (s_g, z_g), computed from the union
        [min(lo), max(hi)] of the members' calibrated ranges
Why: a Concat copies integers, so its inputs and output must be on one grid,
otherwise the fused tensor would carry more precision than its format can
hold. The groups are built by insert_quantizers (Concat, and any op a
backend declares ``same_scale``); the union covers every member.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.pipeline.pass_base import Pass, PassContext, PassResult
from qcompiler.pipeline.properties import CALIBRATED
from qcompiler.quant.plan import QuantPoint, write_qparams


class ShareScales(Pass):
    name = "share_scales"
    requires = (CALIBRATED,)
    ensures = (CALIBRATED,)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        shared = 0
        tensors = graph.tensors()
        for group, members in sorted(ctx.plan.groups().items()):
            if len(members) < 2:
                continue
            leader = next((m for m in members if m.tensor == group), members[0])
            _share(tensors, leader, members)
            ctx.explain(group, True, f"{len(members)} quantizers share one scale: "
                        + ", ".join(sorted(m.tensor for m in members)))
            shared += 1
        return PassResult(changed=shared > 0, stats={"groups": shared})


def _share(tensors: dict[str, gs.Tensor], leader: QuantPoint, members: list[QuantPoint]) -> None:
    lo = np.min([np.min(m.lo) for m in members])
    hi = np.max([np.max(m.hi) for m in members])
    leader.set_range(lo, hi)
    write_qparams(tensors, leader)
    scale, zero_point = tensors[leader.scale_tensor], tensors[leader.zero_point_tensor]
    for member in members:
        if member is leader:
            continue
        member.spec, member.spec_name = leader.spec, leader.spec_name
        member.lo, member.hi = np.asarray(lo), np.asarray(hi)
        member.grid, member.scale, member.zero_point = leader.grid, leader.scale, leader.zero_point
        for node in list(tensors[member.scale_tensor].outputs):  # its Q and DQ
            node.inputs[1], node.inputs[2] = scale, zero_point
        member.scale_tensor, member.zero_point_tensor = leader.scale_tensor, leader.zero_point_tensor
        write_qparams(tensors, member)  # its Q output dtype and clip bounds follow the shared grid
