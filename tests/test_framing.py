"""Turntable framing: the video's camera is set from the object's extent, so the object fills the frame."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_export import EllipsoidField

from msd3d.export.video import VideoConfig, turntable_cameras_for
from msd3d.render.cameras import Cameras, frame_points
from msd3d.workflows.assets import frame_turntable, occupied_points


def ellipsoid_mask(cameras: Cameras, centre, axes) -> torch.Tensor:
    """(B, H, W) bool: which pixels' rays hit the ellipsoid (closed form)."""
    origins, dirs = cameras.rays()
    c, a = torch.tensor(centre), torch.tensor(axes)
    o, d = (origins - c) / a, dirs / a
    qa, qb, qc = (d * d).sum(-1), 2 * (o * d).sum(-1), (o * o).sum(-1) - 1.0
    disc = qb * qb - 4 * qa * qc
    far = (-qb + disc.clamp_min(0).sqrt()) / (2 * qa)
    return (disc >= 0) & (far > 0)


def silhouette_spans(mask: torch.Tensor) -> torch.Tensor:
    """(B,) the larger of the silhouette's height and width in each frame, as a fraction of the frame."""
    spans = []
    for m in mask:
        rows, cols = m.any(dim=1).nonzero(), m.any(dim=0).nonzero()
        if len(rows) == 0:
            spans.append(0.0)
        else:
            spans.append(max(int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) / m.shape[0])
    return torch.tensor(spans)


CENTRE, AXES = (0.1, 0.2, 0.15), (0.12, 0.18, 0.3)  # about the size of an oracle shape: a third of the fixed frame


def test_framed_turntable_fills_the_frame():
    field = EllipsoidField(CENTRE, AXES)
    config = VideoConfig(frames=8, size=64)
    framed, target = frame_turntable(field, config)
    mask = ellipsoid_mask(turntable_cameras_for(framed, target), CENTRE, AXES)
    spans = silhouette_spans(mask)
    # the widest view spans about `fill` of the frame (the hull is slightly larger than the object)
    assert 0.72 <= float(spans.max()) <= config.fill + 0.03, spans
    assert float(spans.min()) >= 0.5, spans  # every view shows the object large
    # nothing is cut off: no silhouette pixel on the frame's border
    assert not (mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any())
    # the camera circles the object's centre, not the origin (the ellipsoid is off-centre)
    assert torch.allclose(torch.tensor(target), torch.tensor(CENTRE), atol=0.05)
    # the silhouette covers a reasonable fraction of the pixels (this ellipsoid is tall and thin:
    # its bounding box's area fraction is at most about 0.4), three times what the fixed camera showed
    area = mask.float().mean(dim=(1, 2))
    fixed = dataclasses.replace(config, fill=0.0)
    fixed_area = ellipsoid_mask(turntable_cameras_for(fixed), CENTRE, AXES).float().mean(dim=(1, 2))
    assert float(area.min()) > 0.12 and float((area / fixed_area).min()) > 3.0, (area, fixed_area)


def test_fill_zero_keeps_the_fixed_camera_and_shows_the_old_small_object():
    field = EllipsoidField(CENTRE, AXES)
    config = VideoConfig(frames=8, size=64, fill=0.0)
    framed, target = frame_turntable(field, config)
    assert target is None and framed.distance == config.distance
    spans = silhouette_spans(ellipsoid_mask(turntable_cameras_for(framed, target), CENTRE, AXES))
    assert float(spans.max()) < 0.4  # what the fixed camera gave before framing: a third of the frame


def test_frame_points_matches_the_closed_form_for_a_point_pair():
    # two points at +-r on the vertical axis, camera on the horizon: d = r / (tan(fovy/2) * fill)
    r, fovy, fill = 0.4, 50.0, 0.8
    points = torch.tensor([[0.0, 0.0, -r], [0.0, 0.0, r]])
    distance, target = frame_points(points, 0.0, fovy, fill, torch.tensor([0.0, 90.0]))
    expected = r / (torch.tan(torch.deg2rad(torch.tensor(fovy / 2))) * fill)
    assert distance == pytest.approx(float(expected), rel=1e-5)
    assert target == (0.0, 0.0, 0.0)


def test_empty_field_keeps_the_configured_camera():
    class Empty:
        bound = 1.0

        def density(self, points):
            return torch.zeros(points.shape[:-1])

    assert len(occupied_points(Empty())) == 0
    config = VideoConfig(frames=4, size=16)
    assert frame_turntable(Empty(), config) == (config, None)


def test_fill_is_validated():
    with pytest.raises(ValueError, match="video.fill"):
        dataclasses.replace(VideoConfig(), fill=1.2).validate()


def test_floaters_do_not_shrink_the_object_but_thin_parts_count():
    from test_export import SpheresField

    # a ball, a thin stem under it (part of the object) and a small floater far off to the side
    ball = SpheresField(
        [((0.0, 0.0, 0.1), 0.3)]
        + [((0.0, 0.0, 0.1 - 0.04 * i), 0.05) for i in range(16)]
        + [((0.8, 0.8, 0.8), 0.06)]
    )
    points = occupied_points(ball)
    lo, hi = points.min(dim=0).values, points.max(dim=0).values
    assert float(hi.max()) < 0.5  # the floater at (0.8, 0.8, 0.8) is gone
    assert float(lo[2]) < -0.5  # the stem's bottom (z = -0.55) is kept
