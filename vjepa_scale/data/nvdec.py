"""Which files DALI decodes correctly, per device: the one table, and the per-file routing decision.

`stream_format(path)` reads a file's video stream header with PyAV (codec by FFmpeg's codec id, not
the decoder's name: AV1 is "av1" whether PyAV decodes it with libdav1d or libaom; profile, pixel
format, bit depth, chroma subsampling, size, colour matrix). `dali_route(fmt, device, capability)`
says whether DALI decodes the file on that device, or why it must go to the CPU path (PyAV) instead.

What the GPU path can decode is the intersection of three things (read in DALI 2.4's source and
NVIDIA's NVDEC application note, Video Codec SDK 13.0):
- DALI's mixed decoder accepts h264, hevc, vp8, vp9, av1 and mpeg4 (MJPEG is listed in its docs but
  refused by the code), creates every NVDEC surface as 8-bit NV12 and converts NV12 -> RGB itself.
- NVDEC per GPU generation (`NVDEC_CODECS`): AV1 only on GA10x (sm_86/87), Ada (sm_89) and
  Blackwell (sm_10x/12x), not on Turing, GA100 or Hopper; H.264 High10/High422 and HEVC 4:2:2 only
  on Blackwell; minimum and maximum frame sizes per codec (`NVDEC_SIZES`).
- DALI's NV12 -> RGB kernel writes 2x2 pixel blocks (odd widths/heights write outside the frame) and
  reads 8-bit samples only; so the GPU path takes 8-bit 4:2:0 streams with even sizes, and 10-bit,
  4:2:2, 4:4:4, monochrome and odd-sized files go to PyAV.
DALI's CPU decoder (libavcodec + swscale) reads VP8, VP9 and MJPEG at any size; it takes 8-bit input
(10-bit is untested there and goes to PyAV).

Colour: DALI converts every limited-range stream with the BT.601 matrix (full range: JPEG's), while
PyAV follows the stream's tag. For BT.709-tagged streams the DALI pipeline applies
`BT601_TO_BT709` to the RGB it gets (exact up to colours BT.601 had to clip: saturated primaries).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vjepa_scale.data.decode import Deadline, VideoError, _open, edit_list_hides_frames

# FFmpeg decoder (implementation) names -> codec names, for code that only has a decoder's name.
DECODER_TO_CODEC = {
    "libdav1d": "av1", "libaom-av1": "av1", "av1_cuvid": "av1", "av1_qsv": "av1",
    "libvpx": "vp8", "vp8_cuvid": "vp8", "libvpx-vp9": "vp9", "vp9_cuvid": "vp9",
    "h264_cuvid": "h264", "hevc_cuvid": "hevc", "mpeg4_cuvid": "mpeg4", "mjpeg_cuvid": "mjpeg",
    "libopenh264": "h264",
}

DALI_GPU_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4"})  # VideoDecoderMixed's list
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})


def canonical_codec(name: str) -> str:
    """Codec name for a codec or decoder name ("libdav1d" -> "av1", "h264" -> "h264")."""
    return DECODER_TO_CODEC.get(name, name)


@dataclass(frozen=True)
class NvdecCodec:
    """NVDEC support of one codec: minimum compute capability, and the extra cases only Blackwell has."""

    min_capability: tuple[int, int]
    not_on: frozenset = frozenset()  # capabilities newer than the minimum that still lack the codec
    profiles: frozenset | None = None  # FFmpeg profile names NVDEC decodes (None: any)


_BLACKWELL = (10, 0)
NVDEC_CODECS = {
    "h264": NvdecCodec((5, 0), profiles=frozenset({"Baseline", "Constrained Baseline", "Main", "Extended", "High",
                                                 "Progressive High", "Constrained High"})),
    "hevc": NvdecCodec((5, 2), profiles=frozenset({"Main", "Main 10", "Main Still Picture", "Rext"})),
    "vp8": NvdecCodec((5, 2)),
    "vp9": NvdecCodec((5, 2), profiles=frozenset({"Profile 0", "Profile 2"})),
    "mpeg4": NvdecCodec((3, 0), profiles=frozenset({"Simple Profile", "Advanced Simple Profile"})),
    # AV1: GA10x (8.6, 8.7), Ada (8.9), Blackwell; GA100 (8.0) and Hopper (9.0) have no AV1 decoder.
    "av1": NvdecCodec((8, 6), not_on=frozenset({(9, 0)}), profiles=frozenset({"Main"})),
}
# (min width, min height, max width, max height); H.264 8192x8192 needs Blackwell (not used here).
NVDEC_SIZES = {
    "h264": (48, 16, 4096, 4096),
    "hevc": (144, 144, 8192, 8192),
    "vp8": (48, 16, 4096, 4096),
    "vp9": (128, 128, 8192, 8192),
    "mpeg4": (48, 16, 2032, 2032),
    "av1": (128, 128, 8192, 8192),
}


@dataclass(frozen=True)
class StreamFormat:
    """Header facts of a file's first video stream that decide which decoder can read it."""

    path: str
    codec: str  # FFmpeg codec name (avcodec_get_name): h264, hevc, vp9, vp8, av1, mpeg4, mjpeg, ...
    profile: str | None
    pix_fmt: str | None
    bit_depth: int
    chroma: str  # "420", "422", "444", "400" (monochrome) or "?"
    width: int
    height: int
    colorspace: int  # AVColorSpace: 1 BT.709, 5/6 BT.601, 2 unspecified, ...
    full_range: bool
    hidden_frames: bool = False  # an MP4 edit list hides some stored frames (`decode.edit_list_hides_frames`)


def _chroma(fmt) -> str:
    comps = list(fmt.components)
    if len(comps) < 3:
        return "400"
    luma, cb = comps[0], comps[1]
    sub = (round(luma.width / max(cb.width, 1)), round(luma.height / max(cb.height, 1)))  # odd sizes round up
    return {(1, 1): "444", (2, 1): "422", (2, 2): "420"}.get(sub, "?")


def stream_format(path: str, deadline: Deadline | None = None) -> StreamFormat:
    """`StreamFormat` of `path` (header only). Raises VideoError when the file is not a readable video
    (DecodeTimeout past `deadline`)."""
    container = _open(path, deadline)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        fmt = ctx.format
        if fmt is not None and list(fmt.components):
            bits = max(c.bits for c in fmt.components)
            chroma = _chroma(fmt)
        else:
            bits, chroma = 8, "?"
        return StreamFormat(path, canonical_codec(ctx.codec.canonical_name), ctx.profile, ctx.pix_fmt, int(bits),
                            chroma, int(ctx.width or 0), int(ctx.height or 0), int(ctx.colorspace or 2),
                            int(ctx.color_range or 0) == 2 or (ctx.pix_fmt or "").startswith("yuvj"),
                            edit_list_hides_frames(container, stream, int(stream.frames or 0)))
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(path, f"unreadable stream header ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def nvdec_reason(fmt: StreamFormat, capability: tuple[int, int]) -> str | None:
    """Why NVDEC on a GPU of compute `capability` cannot decode `fmt` as DALI drives it, or None."""
    codec = fmt.codec
    if codec not in DALI_GPU_CODECS:
        return f"codec {codec} is not decoded by DALI's GPU decoder"
    spec = NVDEC_CODECS[codec]
    if tuple(capability) < spec.min_capability or tuple(capability) in spec.not_on:
        return f"codec {codec} has no NVDEC decoder on compute capability {capability[0]}.{capability[1]}"
    if spec.profiles is not None and fmt.profile is not None and fmt.profile not in spec.profiles:
        return f"{codec} profile {fmt.profile!r} is not decoded by NVDEC"
    if fmt.bit_depth != 8 or fmt.chroma != "420":
        return (f"{fmt.pix_fmt or '?'} ({fmt.bit_depth}-bit, chroma {fmt.chroma}): DALI's GPU decoder "
                f"outputs 8-bit 4:2:0 only")
    lo_w, lo_h, hi_w, hi_h = NVDEC_SIZES[codec]
    if not (lo_w <= fmt.width <= hi_w and lo_h <= fmt.height <= hi_h):
        return f"{fmt.width}x{fmt.height} is outside NVDEC's {codec} range {lo_w}x{lo_h}..{hi_w}x{hi_h}"
    if fmt.width % 2 or fmt.height % 2:
        return f"odd size {fmt.width}x{fmt.height} (DALI's GPU colour conversion needs even sizes)"
    return None


def dali_route(fmt: StreamFormat, device: str, capability: tuple[int, int] | None = None) -> str | None:
    """None when DALI on `device` ("gpu"/"cpu") decodes `fmt` correctly, else why PyAV must (a reason)."""
    if fmt.colorspace not in LUMA_WEIGHTS:
        return f"colour matrix {fmt.colorspace} (AVColorSpace) is not reproduced on DALI's BT.601 output"
    if fmt.hidden_frames:  # our frame numbers count the shown frames only; DALI's reader is not checked on these
        return "an edit list hides some of its stored frames, which DALI's reader is not verified to skip"
    if device == "gpu":
        if capability is None:
            raise ValueError("dali_route on the GPU needs the device's compute capability")
        return nvdec_reason(fmt, capability)
    if fmt.codec not in DALI_CPU_CODECS:
        return f"codec {fmt.codec} is not decoded by DALI's CPU decoder"
    if fmt.bit_depth != 8:
        return f"{fmt.pix_fmt or '?'} ({fmt.bit_depth}-bit) is not verified with DALI's CPU decoder"
    return None


def _ycbcr_to_rgb(kr: float, kb: float) -> np.ndarray:
    """(Y, Cb, Cr) -> (R, G, B) for luma weights kr, kb (components centred and scaled to one range)."""
    kg = 1.0 - kr - kb
    return np.array([[1.0, 0.0, 2 * (1 - kr)],
                     [1.0, -2 * kb * (1 - kb) / kg, -2 * kr * (1 - kr) / kg],
                     [1.0, 2 * (1 - kb), 0.0]])


# Luma weights (kr, kb) of the YCbCr matrices PyAV (swscale) converts with, by AVColorSpace tag; DALI
# always converts with BT.601's, so its RGB is re-mixed to the tagged matrix (same offsets and ranges
# cancel). 2 (unspecified), 5 and 6 are BT.601 itself. Other tags (BT.2020 constant luminance, YCgCo,
# ...) are no such matrix: PyAV decodes those files (`dali_route`).
BT601 = (0.299, 0.114)
LUMA_WEIGHTS = {1: (0.2126, 0.0722), 2: BT601, 4: (0.30, 0.11), 5: BT601, 6: BT601, 7: (0.212, 0.087),
                9: (0.2627, 0.0593)}
AVCOL_SPC_BT709 = 1


def colour_matrix(fmt: StreamFormat | None) -> np.ndarray:
    """3x3 matrix the DALI pipeline applies to its RGB output so that it matches PyAV's for `fmt`."""
    weights = LUMA_WEIGHTS.get(fmt.colorspace, BT601) if fmt is not None else BT601
    if weights == BT601:
        return np.eye(3, dtype=np.float32)
    return (_ycbcr_to_rgb(*weights) @ np.linalg.inv(_ycbcr_to_rgb(*BT601))).astype(np.float32)

