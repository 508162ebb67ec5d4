"""Turntable videos: render a full circle of views, lay panels side by side, write MP4 or GIF.

The renderer is passed in as ``render_fn(cameras) -> dict[str, Tensor]`` so this module knows
nothing about fields or ray marching. Keys it understands (any subset, per the requested panels):

* ``"rgb"``      (B, H, W, 3) colour in [0, 1]
* ``"normals"``  (B, H, W, 3) world-space normals in [-1, 1] (re-normalised here; opacity-weighted
  accumulations are fine)
* ``"depth"``    (B, H, W, 1) or (B, H, W) distance along the ray, world units
* ``"opacity"``  (B, H, W, 1) or (B, H, W) accumulated alpha in [0, 1]; when present, the normals and
  depth panels are composited over ``VideoConfig.background`` with it

MP4 is H.264 in ``yuv420p`` (plays everywhere), which needs even frame sizes: odd sizes are padded by
repeating the last row/column. GIF merges consecutive *identical* frames into one longer frame
(Pillow does this; the total duration is unchanged).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from msd3d.atomic_io import atomic_path
from msd3d.errors import DiskFullError, Msd3dError
from msd3d.render.cameras import Cameras, turntable_cameras

__all__ = [
    "PANELS",
    "VIDEO_FORMATS",
    "VideoConfig",
    "turntable_cameras_for",
    "render_turntable",
    "colorize_depth",
    "normals_to_rgb",
    "write_video",
    "read_video_frames",
]

PANELS = ("rgb", "normals", "depth", "opacity")
MAX_FRAMES = 3600
MAX_SIZE = 2048
MAX_FRAME_BYTES = 8 * 2**30
"""The turntable is held in memory as uint8 RGB before it is encoded."""
VIDEO_FORMATS = ("mp4", "gif")

RenderFn = Callable[[Cameras], dict[str, Tensor]]


@dataclass
class VideoConfig:
    """A turntable: ``frames`` views evenly spaced in azimuth at a fixed elevation and distance."""

    frames: int = 120
    """Views in one full turn (the video's frame count); at most 3600."""
    size: int = 256
    """Height = width of each panel, in pixels; at most 2048 (and all frames together at most 8 GiB)."""
    fps: int = 30
    """Frames per second of the written video."""
    elevation: float = 15.0
    """Degrees above the horizon, -90 to 90."""
    distance: float = 1.75
    """Camera distance from the origin, world units (used when video.fill is 0)."""
    fill: float = 0.85
    """Frame the object: the camera circles the centre of the object's extent at the distance where
    its widest view spans this fraction of the frame; 0 = circle the origin at video.distance."""
    fovy: float = 55.0
    """Vertical field of view, degrees."""
    start_azimuth: float = 0.0
    """Azimuth of the first frame (0 = the front, camera on +x)."""
    format: str = "mp4"
    """"mp4" (H.264) or "gif"."""
    panels: tuple[str, ...] = ("rgb",)
    """Side-by-side panels, left to right: any of "rgb", "normals", "depth", "opacity"."""
    batch_size: int = 4
    """Views rendered per ``render_fn`` call."""
    depth_colormap: str = "turbo"
    """Matplotlib colormap for the depth panel (near = high end of the map)."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour behind the normals/depth panels where opacity is low."""
    quality: int = 8
    """H.264 quality, 0 (smallest) to 10 (best), imageio-ffmpeg's scale."""

    def validate(self) -> None:
        if self.frames < 1:
            raise ValueError("video.frames must be at least 1")
        if self.frames > MAX_FRAMES:
            raise ValueError(f"video.frames must be at most {MAX_FRAMES}, got {self.frames}")
        if self.size < 2:
            raise ValueError("video.size must be at least 2")
        if self.size > MAX_SIZE:
            raise ValueError(f"video.size must be at most {MAX_SIZE}, got {self.size}")
        if self.fps < 1:
            raise ValueError("video.fps must be at least 1")
        if self.distance <= 0:
            raise ValueError("video.distance must be positive")
        if not 0 <= self.fill < 1:
            raise ValueError("video.fill must lie in [0, 1) (0 = fixed video.distance)")
        if not 0 < self.fovy < 180:
            raise ValueError("video.fovy must lie in (0, 180) degrees")
        if not -90 <= self.elevation <= 90:
            raise ValueError(f"video.elevation must lie in [-90, 90] degrees, got {self.elevation}")
        if self.format not in VIDEO_FORMATS:
            raise ValueError(f"video.format must be one of {list(VIDEO_FORMATS)}, got {self.format!r}")
        if not self.panels or any(p not in PANELS for p in self.panels):
            raise ValueError(f"video.panels must be a non-empty list of {list(PANELS)}, got {list(self.panels)}")
        frame_bytes = self.frames * self.size * self.size * len(self.panels) * 3
        if frame_bytes > MAX_FRAME_BYTES:
            raise ValueError(
                f"video.frames x video.size: {self.frames} frames of {len(self.panels)} x {self.size}^2 pixels need "
                f"{frame_bytes / 2**30:.1f} GiB in memory (at most {MAX_FRAME_BYTES // 2**30}); lower one of them"
            )
        if self.batch_size < 1:
            raise ValueError("video.batch_size must be at least 1")
        if len(self.background) != 3 or not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError("video.background must be three numbers in [0, 1]")
        if not 0 <= self.quality <= 10:
            raise ValueError("video.quality must lie in [0, 10]")
        import matplotlib

        if self.depth_colormap not in matplotlib.colormaps:
            raise ValueError(f"video.depth_colormap {self.depth_colormap!r} is not a matplotlib colormap")


def turntable_cameras_for(config: VideoConfig, target: tuple[float, float, float] | None = None) -> Cameras:
    """The ``config.frames`` cameras of the turntable (on the CPU), circling ``target`` (default the origin)."""
    return turntable_cameras(
        config.frames,
        config.size,
        config.size,
        elevation=config.elevation,
        distance=config.distance,
        fovy=config.fovy,
        start_azimuth=config.start_azimuth,
        target=target,
    )


# ----------------------------------------------------------------------------------------------
# panels


def _channel(image: Tensor | np.ndarray) -> np.ndarray:
    """(B, H, W) or (B, H, W, 1) → (B, H, W) float32 numpy."""
    array = image.detach().float().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image, np.float32)
    return array[..., 0] if array.ndim == 4 else array


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.nan_to_num(image) * 255.0), 0, 255).astype(np.uint8)


def _composite(colour: np.ndarray, opacity: np.ndarray | None, background: tuple[float, float, float]) -> np.ndarray:
    """colour (B, H, W, 3) over the background with opacity (B, H, W) (or unchanged without opacity)."""
    if opacity is None:
        return colour
    alpha = np.clip(opacity, 0.0, 1.0)[..., None]
    return colour * alpha + np.asarray(background, np.float32) * (1.0 - alpha)


def normals_to_rgb(
    normals: np.ndarray, opacity: np.ndarray | None = None, background: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """World normals (B, H, W, 3) in [-1, 1] → colours in [0, 1]: ``(n / |n| + 1) / 2``, over the background."""
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    unit = np.where(norm > 1e-6, normals / np.maximum(norm, 1e-6), 0.0)
    return _composite(0.5 * (unit + 1.0), opacity, background)


def colorize_depth(
    depth: np.ndarray,
    opacity: np.ndarray | None = None,
    colormap: str = "turbo",
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    depth_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Depth (B, H, W) → colours (B, H, W, 3) in [0, 1]; near maps to the colormap's high end.

    The range is the 1st-99th percentile of foreground depths over **all** frames (so colours do not
    flicker along a turntable) unless ``depth_range=(near, far)`` is given. Foreground: opacity > 0.5,
    or finite positive depth without an opacity.
    """
    import matplotlib

    depth = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    foreground = opacity > 0.5 if opacity is not None else depth > 0
    if depth_range is None:
        values = depth[foreground]
        near, far = (np.percentile(values, [1.0, 99.0]) if values.size else (0.0, 1.0))
    else:
        near, far = depth_range
    far = max(float(far), float(near) + 1e-6)
    t = 1.0 - np.clip((depth - near) / (far - near), 0.0, 1.0)
    colour = matplotlib.colormaps[colormap](t)[..., :3].astype(np.float32)
    if opacity is None:
        opacity = foreground.astype(np.float32)
    return _composite(colour, opacity, background)


@torch.no_grad()
def render_turntable(
    render_fn: RenderFn,
    config: VideoConfig | None = None,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
    target: tuple[float, float, float] | None = None,
    progress: Any | None = None,
) -> np.ndarray:
    """Render the turntable → frames (N, H, W * len(panels), 3) uint8, panels left to right.

    ``render_fn`` receives ``Cameras`` batches (at most ``config.batch_size`` views, on ``device``)
    and returns the images named in the module docstring; it runs under ``torch.no_grad``.
    The cameras circle ``target`` (default the origin) at ``config.distance``; framing from the
    object's extent (``config.fill``) is the caller's job (``msd3d.workflows.assets.frame_turntable``).
    ``show_progress`` shows a transient rich progress bar, or the frames go to ``progress`` (a
    running ``msd3d.progress_bar.make_progress`` display, e.g. the finishing stage's) when given.
    """
    config = config or VideoConfig()
    config.validate()
    cameras = turntable_cameras_for(config, target)
    n, size = config.frames, config.size
    frames = np.empty((n, size, size * len(config.panels), 3), np.uint8)
    depth_raw = np.empty((n, size, size), np.float32) if "depth" in config.panels else None
    depth_alpha: np.ndarray | None = None

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("turntable"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    own = Progress(*columns, transient=True, disable=not show_progress or progress is not None)
    with own:
        bar = progress if progress is not None else own
        task = bar.add_task("turntable", total=n)
        for start in range(0, n, config.batch_size):
            stop = min(start + config.batch_size, n)
            outputs = render_fn(cameras[start:stop].to(device))
            missing = [p for p in config.panels if p not in outputs]
            if missing:
                raise Msd3dError(
                    f"the renderer returned no {missing} images (it returned {sorted(outputs)}); "
                    "choose video panels from those"
                )
            opacity = _channel(outputs["opacity"]) if "opacity" in outputs else None
            for index, panel in enumerate(config.panels):
                cols = slice(index * size, (index + 1) * size)
                if panel == "rgb":
                    frames[start:stop, :, cols] = _to_uint8(outputs["rgb"].detach().float().cpu().numpy())
                elif panel == "normals":
                    normals = outputs["normals"].detach().float().cpu().numpy()
                    frames[start:stop, :, cols] = _to_uint8(normals_to_rgb(normals, opacity, config.background))
                elif panel == "opacity":
                    frames[start:stop, :, cols] = _to_uint8(np.repeat(opacity[..., None], 3, axis=-1))
                elif panel == "depth":
                    depth_raw[start:stop] = _channel(outputs["depth"])
                    if opacity is not None:
                        if depth_alpha is None:
                            depth_alpha = np.empty((n, size, size), np.float32)
                        depth_alpha[start:stop] = opacity
            bar.advance(task, stop - start)

    if depth_raw is not None:  # colour depth once all frames are in, with one range for the video
        index = config.panels.index("depth")
        coloured = colorize_depth(depth_raw, depth_alpha, config.depth_colormap, config.background)
        frames[:, :, index * size : (index + 1) * size] = _to_uint8(coloured)
    return frames


# ----------------------------------------------------------------------------------------------
# files


def _as_uint8_frames(frames: np.ndarray | Tensor) -> np.ndarray:
    array = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] not in (3, 4):
        raise ValueError(f"frames must be (N, H, W, 3), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("frames must contain at least one frame")
    if array.dtype != np.uint8:
        array = _to_uint8(array.astype(np.float32))  # floats are taken to be in [0, 1]
    return np.ascontiguousarray(array[..., :3])


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row / column where a size is odd."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def _write_mp4(frames: np.ndarray, path: Path, fps: int, quality: int) -> None:
    import imageio_ffmpeg

    frames = _pad_to_even(frames)
    writer = imageio_ffmpeg.write_frames(
        str(path),
        size=(frames.shape[2], frames.shape[1]),  # (width, height)
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=quality,
        macro_block_size=1,  # sizes are already even; never let imageio-ffmpeg rescale
        ffmpeg_log_level="quiet",  # failures are reported in one line by the check in write_video
        output_params=["-movflags", "+faststart"],
    )
    try:
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    except OSError:
        pass  # ffmpeg exited early (e.g. a full disk: broken pipe); _check_written reports what is missing
    finally:
        writer.close()


def _write_gif(frames: np.ndarray, path: Path, fps: int) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    duration_ms = max(20, int(round(1000.0 / fps)))  # GIF stores centiseconds; < 20 ms plays slowly in browsers
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


def write_video(
    frames: np.ndarray | Tensor, path: str | os.PathLike[str], fps: int = 30, quality: int = 8
) -> Path:
    """Write frames (N, H, W, 3) uint8 (or floats in [0, 1]) to ``path`` atomically; format by extension.

    ``.mp4``: H.264, yuv420p, odd sizes padded to even. ``.gif``: looping, 256-colour palette per frame.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in VIDEO_FORMATS:
        raise Msd3dError(f"unknown video format {path.suffix!r} for {path}; use .mp4 or .gif")
    if fps < 1:
        raise ValueError("fps must be at least 1")
    array = _as_uint8_frames(frames)
    with atomic_path(path) as tmp:
        if fmt == "mp4":
            _write_mp4(array, tmp, fps, quality)
        else:
            _write_gif(array, tmp, fps)
        _check_written(tmp, path, fmt, len(array))
    return path


def count_video_frames(path: str | os.PathLike[str]) -> int:
    """Frames that decode from an MP4 (ffmpeg) or GIF (Pillow); 0 when the file does not decode."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    try:
        if path.stat().st_size == 0:
            return 0
        if fmt == "mp4":
            import imageio_ffmpeg

            return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
        from PIL import Image, ImageSequence

        with Image.open(path) as image:
            count = 0
            for frame in ImageSequence.Iterator(image):
                frame.load()
                count += 1
            return count
    except Exception:  # noqa: BLE001 - any decoder failure means the file is not a usable video
        return 0


def _check_written(tmp: Path, target: Path, fmt: str, expected: int) -> None:
    """Raise unless ``tmp`` decodes to the frames just written (then ``atomic_path`` keeps the old file).

    The encoder's own exit status is not reported by imageio-ffmpeg, so a full disk used to leave an
    empty or truncated file that was then renamed over a good video.
    """
    count = count_video_frames(tmp)
    # GIF merges consecutive identical frames (Pillow), so it may hold fewer than were written
    complete = count == expected if fmt == "mp4" else 1 <= count <= expected
    if complete:
        return
    if shutil.disk_usage(tmp.parent).free < 1 << 20:  # the usual cause: the encoder hit a full disk
        raise DiskFullError(target, "; the existing file (if any) is unchanged")
    raise Msd3dError(
        f"writing {target} failed: the encoded video holds {count} of {expected} frames; "
        "the existing file (if any) is unchanged; check the disk and rerun"
    )


def read_video_frames(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode every frame of an MP4 or GIF → (N, H, W, 3) uint8 (for tests and previews)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt == "mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(buffer, np.uint8).reshape(height, width, 3) for buffer in reader]
        return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
    if fmt == "gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as image:
            return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])
    raise Msd3dError(f"unknown video format {path.suffix!r} for {path}; use .mp4 or .gif")
