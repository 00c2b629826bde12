"""PIL renderers of the demo worlds: vehicle crops, person crops, garment photos, vehicle scenes.

Every function draws only from the ``numpy.random.Generator`` it is given, so an image is a
pure function of ``(spec, rng seed, difficulty)``. Sizes are in pixels; relative lengths are
fractions of the box being drawn into.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from irkit.data.demo.config import DemoDifficulty
from irkit.data.demo.vocab import (
    CLOTHING_RGB,
    VEHICLE_COLOUR_RGB,
    emblem_code,
    person_spec_from_flags,
    sample_person_flags,
)

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1

# ----------------------------------------------------------------------------------------
# colour helpers
# ----------------------------------------------------------------------------------------


def _clip_rgb(values: Sequence[float]) -> RGB:
    return tuple(int(min(255, max(0, round(v)))) for v in values)  # type: ignore[return-value]


def jitter_colour(rgb: Sequence[float], rng: np.random.Generator, cfg: DemoDifficulty, scale: float = 1.0) -> RGB:
    """``rgb`` times a random brightness factor plus a per-channel shift (paint/lighting variation)."""
    factor = 1.0 + rng.normal(0.0, cfg.colour_brightness_jitter * scale)
    shift = rng.normal(0.0, cfg.colour_channel_jitter * scale, 3)
    return _clip_rgb(np.asarray(rgb, dtype=float) * factor + shift)


def _shade(rgb: Sequence[float], factor: float) -> RGB:
    return _clip_rgb(np.asarray(rgb, dtype=float) * factor)


def _random_muted(rng: np.random.Generator, low: int = 50, high: int = 200) -> RGB:
    return _clip_rgb(rng.integers(low, high, 3))


# ----------------------------------------------------------------------------------------
# vehicles
# ----------------------------------------------------------------------------------------

#: Width/height of a side-view vehicle's bounding box, per type.
VEHICLE_BOX_ASPECT: dict[str, float] = {
    "Sedan": 2.05, "SUV": 1.75, "Minivan": 1.8, "Microbus": 1.65, "Bus": 2.25, "Truck": 2.05,
}

# Side-view geometry, vehicle facing right, in (u, v) fractions of its box (u: rear->front).
_VEHICLE_SHAPES: dict[str, dict[str, Any]] = {
    "Sedan": {
        "body": [[(0.02, 0.52), (0.10, 0.44), (0.27, 0.42), (0.37, 0.16), (0.63, 0.16), (0.76, 0.42),
                  (0.95, 0.48), (0.99, 0.60), (0.99, 0.80), (0.02, 0.80)]],
        "windows": [[(0.31, 0.42), (0.39, 0.21), (0.49, 0.21), (0.49, 0.42)],
                    [(0.52, 0.42), (0.52, 0.21), (0.61, 0.21), (0.71, 0.42)]],
        "wheels": [(0.20, 0.80, 0.17), (0.80, 0.80, 0.17)],
        "emblem": {"front": (0.93, 0.58), "rear": (0.06, 0.58)},
    },
    "SUV": {
        "body": [[(0.02, 0.10), (0.70, 0.10), (0.82, 0.38), (0.97, 0.43), (0.99, 0.55), (0.99, 0.80),
                  (0.02, 0.80)]],
        "windows": [[(0.06, 0.17), (0.28, 0.17), (0.28, 0.38), (0.06, 0.38)],
                    [(0.31, 0.17), (0.53, 0.17), (0.53, 0.38), (0.31, 0.38)],
                    [(0.56, 0.17), (0.68, 0.17), (0.77, 0.38), (0.56, 0.38)]],
        "wheels": [(0.19, 0.80, 0.19), (0.81, 0.80, 0.19)],
        "emblem": {"front": (0.93, 0.56), "rear": (0.06, 0.52)},
    },
    "Minivan": {
        "body": [[(0.02, 0.14), (0.58, 0.10), (0.88, 0.38), (0.98, 0.47), (0.99, 0.82), (0.02, 0.82)]],
        "windows": [[(0.05, 0.20), (0.25, 0.18), (0.25, 0.40), (0.05, 0.40)],
                    [(0.28, 0.18), (0.50, 0.16), (0.50, 0.40), (0.28, 0.40)],
                    [(0.53, 0.16), (0.62, 0.16), (0.80, 0.40), (0.53, 0.40)]],
        "wheels": [(0.18, 0.82, 0.16), (0.82, 0.82, 0.16)],
        "emblem": {"front": (0.94, 0.60), "rear": (0.05, 0.55)},
    },
    "Microbus": {
        "body": [[(0.02, 0.07), (0.86, 0.07), (0.97, 0.30), (0.99, 0.85), (0.02, 0.85)]],
        "windows": [[(0.05, 0.14), (0.22, 0.14), (0.22, 0.40), (0.05, 0.40)],
                    [(0.25, 0.14), (0.44, 0.14), (0.44, 0.40), (0.25, 0.40)],
                    [(0.47, 0.14), (0.66, 0.14), (0.66, 0.40), (0.47, 0.40)],
                    [(0.69, 0.14), (0.85, 0.14), (0.93, 0.40), (0.69, 0.40)]],
        "wheels": [(0.18, 0.85, 0.14), (0.82, 0.85, 0.14)],
        "emblem": {"front": (0.95, 0.60), "rear": (0.05, 0.60)},
    },
    "Bus": {
        "body": [[(0.01, 0.04), (0.96, 0.04), (0.99, 0.12), (0.99, 0.87), (0.01, 0.87)]],
        "windows": [[(0.03 + 0.12 * i, 0.12), (0.13 + 0.12 * i, 0.12), (0.13 + 0.12 * i, 0.42),
                     (0.03 + 0.12 * i, 0.42)] for i in range(7)]
        + [[(0.88, 0.12), (0.97, 0.12), (0.97, 0.80), (0.88, 0.80)]],
        "stripe": [(0.01, 0.55), (0.99, 0.55), (0.99, 0.61), (0.01, 0.61)],
        "wheels": [(0.16, 0.87, 0.12), (0.78, 0.87, 0.12)],
        "emblem": {"front": (0.94, 0.70), "rear": (0.05, 0.70)},
    },
    "Truck": {
        "body": [[(0.74, 0.20), (0.91, 0.20), (0.99, 0.45), (0.99, 0.82), (0.74, 0.82)]],
        "cargo": [(0.01, 0.05), (0.72, 0.05), (0.72, 0.78), (0.01, 0.78)],
        "chassis": [(0.01, 0.78), (0.99, 0.78), (0.99, 0.84), (0.01, 0.84)],
        "windows": [[(0.78, 0.26), (0.90, 0.26), (0.95, 0.45), (0.78, 0.45)]],
        "wheels": [(0.12, 0.85, 0.14), (0.28, 0.85, 0.14), (0.86, 0.85, 0.14)],
        "emblem": {"front": (0.94, 0.62), "rear": (0.82, 0.62)},
    },
}

_NEUTRAL_CARGO = ((200, 200, 198), (128, 130, 134), (62, 88, 64), (52, 70, 110))


def _draw_emblem(draw: ImageDraw.ImageDraw, centre: tuple[float, float], size: float, shape: str,
                 rgb: RGB) -> None:
    x, y = centre
    r = max(1.5, size / 2)
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb)
    elif shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=rgb)
    elif shape == "plus":
        t = max(0.6, r / 3)
        draw.rectangle([x - r, y - t, x + r, y + t], fill=rgb)
        draw.rectangle([x - t, y - r, x + t, y + r], fill=rgb)
    elif shape == "ring":
        draw.ellipse([x - r, y - r, x + r, y + r], outline=rgb, width=max(1, int(round(r / 2.5))))
    elif shape == "bar":
        draw.rectangle([x - r * 1.3, y - r * 0.4, x + r * 1.3, y + r * 0.4], fill=rgb)
    else:  # pragma: no cover - EMBLEM_SHAPES is closed
        raise ValueError(f"unknown emblem shape {shape!r}")


def draw_vehicle(draw: ImageDraw.ImageDraw, box: Box, vehicle_type: str, body_rgb: RGB,
                 rng: np.random.Generator, cfg: DemoDifficulty, brand: Optional[str] = None,
                 facing_right: bool = True, lights_on: bool = False) -> list[tuple[float, float]]:
    """Draw a side-view vehicle into ``box``; returns the headlight points (for night glow)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    shape = _VEHICLE_SHAPES[vehicle_type]

    def pt(u: float, v: float) -> tuple[float, float]:
        return (x0 + (u if facing_right else 1.0 - u) * w, y0 + v * h)

    def poly(points: Sequence[tuple[float, float]], fill: RGB) -> None:
        draw.polygon([pt(u, v) for u, v in points], fill=fill)

    dark = _shade(body_rgb, 0.72)
    if "cargo" in shape:
        cargo_rgb = body_rgb
        if rng.random() < cfg.cargo_other_colour_prob:
            cargo_rgb = jitter_colour(_NEUTRAL_CARGO[int(rng.integers(len(_NEUTRAL_CARGO)))], rng, cfg)
        poly(shape["chassis"], (35, 35, 38))
        poly(shape["cargo"], cargo_rgb)
        poly([(0.01, 0.70), (0.72, 0.70), (0.72, 0.78), (0.01, 0.78)], _shade(cargo_rgb, 0.8))
    for body in shape["body"]:
        poly(body, body_rgb)
    # lower skirt shading gives the body some volume
    bottom = max(v for body in shape["body"] for _, v in body)
    u_lo = min(u for body in shape["body"] for u, _ in body)
    u_hi = max(u for body in shape["body"] for u, _ in body)
    poly([(u_lo, bottom - 0.08), (u_hi, bottom - 0.08), (u_hi, bottom), (u_lo, bottom)], dark)
    if "stripe" in shape:
        poly(shape["stripe"], _shade(body_rgb, 0.55) if sum(body_rgb) > 240 else _shade(body_rgb, 1.6))
    glass = jitter_colour((52, 66, 84), rng, cfg, 0.6)
    for window in shape["windows"]:
        poly(window, glass)
    # lights: headlight at the front, tail light at the rear
    front_u = u_hi - 0.02
    light_v = 0.55 if vehicle_type in ("Sedan", "SUV", "Minivan") else 0.72
    head = pt(front_u, light_v)
    tail = pt(u_lo + 0.015, light_v)
    lr = max(1.0, 0.035 * h)
    draw.rectangle([head[0] - lr, head[1] - lr, head[0] + lr, head[1] + lr],
                   fill=(255, 240, 190) if lights_on else (225, 220, 200))
    draw.rectangle([tail[0] - lr, tail[1] - lr, tail[0] + lr, tail[1] + lr], fill=(190, 24, 24))
    for u, v, r in shape["wheels"]:
        cx, cy = pt(u, v)
        radius = r * h
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(20, 20, 22))
        hub = radius * 0.45
        draw.ellipse([cx - hub, cy - hub, cx + hub, cy + hub], fill=(150, 150, 155))
    if brand is not None:
        glyph, emblem_rgb, position = emblem_code(brand)
        eu, ev = shape["emblem"][position]
        _draw_emblem(draw, pt(eu, ev), max(3.0, cfg.emblem_scale * h), glyph, emblem_rgb)
    return [head]


def _vehicle_box_in(vehicle_type: str, width: float, bottom: float, left: float) -> Box:
    """Box of a ``vehicle_type`` of ``width`` px whose bottom-left corner is (``left``, ``bottom``)."""
    h = width / VEHICLE_BOX_ASPECT[vehicle_type]
    return (left, bottom - h, left + width, bottom)


# ----------------------------------------------------------------------------------------
# persons
# ----------------------------------------------------------------------------------------

_SKIN = ((236, 200, 170), (212, 170, 130), (176, 128, 90), (120, 84, 58), (250, 220, 196))
_HAIR = ((22, 18, 16), (60, 40, 26), (110, 76, 40), (196, 164, 96), (40, 30, 26))
_GREY_HAIR = ((196, 196, 192), (150, 150, 148), (232, 232, 228))
_SHOES = ((20, 20, 20), (70, 50, 36), (230, 230, 230), (40, 40, 60))


def _clothing_rgb(name: str, rng: np.random.Generator, cfg: DemoDifficulty) -> RGB:
    return jitter_colour(CLOTHING_RGB[name], rng, cfg)


def _pattern_layer(size: tuple[int, int], base: RGB, pattern: str, accent: RGB, rng: np.random.Generator,
                   unit: float) -> Image.Image:
    """A full-size texture of ``pattern`` (solid/striped/dotted/checked/floral/graphic)."""
    layer = Image.new("RGB", size, base)
    if pattern == "solid":
        return layer
    d = ImageDraw.Draw(layer)
    w, h = size
    step = max(3, int(round(unit)))
    if pattern == "striped":
        offset = int(rng.integers(step))
        for y in range(offset, h, step):
            d.rectangle([0, y, w, y + max(1, step // 3)], fill=accent)
    elif pattern == "checked":
        for y in range(0, h, step):
            d.rectangle([0, y, w, y + max(1, step // 4)], fill=accent)
        for x in range(0, w, step):
            d.rectangle([x, 0, x + max(1, step // 4), h], fill=accent)
    elif pattern == "dotted":
        r = max(1, step // 4)
        for y in range(step // 2, h, step):
            for x in range((y // step % 2) * step // 2, w, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=accent)
    elif pattern == "floral":
        for _ in range(int(w * h / (step * step) * 0.8)):
            x, y = rng.integers(0, w), rng.integers(0, h)
            petal = _clip_rgb(np.asarray(accent) * rng.uniform(0.7, 1.2))
            d.ellipse([x - 1, y - 1, x + 2, y + 2], fill=petal)
    elif pattern == "graphic":
        pass  # drawn on the chest by the caller
    else:  # pragma: no cover
        raise ValueError(f"unknown pattern {pattern!r}")
    return layer


def draw_person(image: Image.Image, box: Box, spec: Mapping[str, Any], rng: np.random.Generator,
                cfg: DemoDifficulty) -> None:
    """Draw a blocky pedestrian described by ``spec`` (see ``vocab.person_spec_from_flags``)."""
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = x0 + w / 2 + rng.normal(0, 0.02 * w)
    female, age, facing = spec["female"], spec["age"], spec["facing"]
    child = age == "child"
    side = facing == "side"
    back = facing == "back"
    side_dir = 1 if rng.random() < 0.5 else -1   # which way a side-view person faces

    head_r = (0.085 if child else 0.064) * h
    head_cy = y0 + head_r + 0.012 * h
    shoulder_y = head_cy + head_r + (0.025 if child else 0.03) * h
    hip_y = y0 + (0.56 if child else 0.52) * h
    knee_y = y0 + 0.75 * h
    ankle_y = y0 + 0.95 * h
    foot_y = y0 + 0.99 * h
    squeeze = 0.62 if side else 1.0
    shoulder_half = (0.25 if female else 0.31) * w * squeeze
    waist_half = (0.17 if female else 0.23) * w * squeeze
    hip_half = (0.27 if female else 0.21) * w * squeeze
    fit = spec["upper"].get("fit", "regular")
    if fit == "loose":
        waist_half = max(waist_half, shoulder_half * 0.95)
        hip_half = max(hip_half, shoulder_half * 0.95)
    elif fit == "slim":
        waist_half *= 0.8
    arm_w = 0.11 * w
    acc = cfg.accessory_scale

    skin = jitter_colour(_SKIN[int(rng.integers(len(_SKIN)))], rng, cfg, 0.5)
    hair_palette = _GREY_HAIR if age == "elderly" else _HAIR
    hair = hair_palette[int(rng.integers(len(hair_palette)))]
    long_hair = female and rng.random() < 0.8
    upper = spec["upper"]
    lower = spec["lower"]
    upper_rgb = _clothing_rgb(upper["colour"], rng, cfg)
    lower_rgb = _clothing_rgb(lower["colour"], rng, cfg) if lower.get("style", "none") != "none" else upper_rgb
    shoes = _SHOES[int(rng.integers(len(_SHOES)))]

    # backpack behind the body (side view: sticks out at the back)
    pack_rgb = _random_muted(rng, 20, 140)
    pack_w, pack_h = 0.36 * w * acc, 0.26 * h * acc
    if spec.get("backpack") and side:
        bx = cx - side_dir * (shoulder_half + pack_w * 0.35)
        draw.rectangle([bx - pack_w / 2, shoulder_y + 0.01 * h, bx + pack_w / 2, shoulder_y + 0.01 * h + pack_h],
                       fill=pack_rgb)
    if long_hair and not back:
        draw.rectangle([cx - head_r * 1.15, head_cy - head_r * 0.4, cx + head_r * 1.15, shoulder_y + 0.07 * h],
                       fill=hair)

    # legs (skin first; trousers cover them)
    leg_w = 0.16 * w
    gap = 0.02 * w if not side else -0.04 * w
    if side:
        stride = 0.10 * w * (1 if rng.random() < 0.5 else -1)
        legs = [[(cx - leg_w / 2, hip_y), (cx + leg_w / 2, hip_y), (cx + leg_w / 2 + stride, ankle_y),
                 (cx - leg_w / 2 + stride, ankle_y)],
                [(cx - leg_w / 2, hip_y), (cx + leg_w / 2, hip_y), (cx + leg_w / 2 - stride, ankle_y),
                 (cx - leg_w / 2 - stride, ankle_y)]]
    else:
        legs = [[(cx - gap - leg_w, hip_y), (cx - gap, hip_y), (cx - gap, ankle_y), (cx - gap - leg_w, ankle_y)],
                [(cx + gap, hip_y), (cx + gap + leg_w, hip_y), (cx + gap + leg_w, ankle_y), (cx + gap, ankle_y)]]
    for leg in legs:
        draw.polygon(leg, fill=skin)
        (ax, _), (bx_, _) = leg[3], leg[2]
        draw.rectangle([min(ax, bx_) - 0.02 * w, ankle_y, max(ax, bx_) + 0.02 * w, foot_y], fill=shoes)

    style = upper.get("style", "top")
    lower_style = lower.get("style", "trousers")
    if lower_style in ("trousers", "shorts"):
        end_y = ankle_y if lower_style == "trousers" else hip_y + 0.42 * (knee_y - hip_y) + 0.05 * h
        for leg in legs:
            (ax0, ay0), (ax1, _), (bx1, by1), (bx0, _) = leg
            t = (end_y - ay0) / (by1 - ay0)
            draw.polygon([(ax0, ay0), (ax1, ay0), (ax1 + (bx1 - ax1) * t, end_y), (ax0 + (bx0 - ax0) * t, end_y)],
                         fill=lower_rgb)
        draw.rectangle([cx - hip_half, hip_y - 0.02 * h, cx + hip_half, hip_y + 0.05 * h], fill=lower_rgb)

    # garment mask: torso (+ skirt / dress / coat body)
    mask = Image.new("L", image.size, 0)
    mdraw = ImageDraw.Draw(mask)
    torso = [(cx - shoulder_half, shoulder_y), (cx + shoulder_half, shoulder_y), (cx + waist_half, hip_y - 0.08 * h),
             (cx + hip_half, hip_y + 0.02 * h), (cx - hip_half, hip_y + 0.02 * h), (cx - waist_half, hip_y - 0.08 * h)]
    mdraw.polygon(torso, fill=255)
    hem = {"mini": hip_y + 0.12 * h, "knee": knee_y + 0.01 * h, "maxi": ankle_y - 0.01 * h}
    skirt_mask = None
    if style in ("dress", "coat") or lower_style == "skirt":
        length = lower.get("length", "knee") if style != "coat" else "knee"
        bottom = hem.get(length, knee_y)
        if lower_style == "skirt" and style != "dress" and style != "coat":
            bottom = hem["mini"] + 0.05 * h
        flare = 1.35 if style != "coat" else 1.12
        skirt = [(cx - hip_half, hip_y - 0.01 * h), (cx + hip_half, hip_y - 0.01 * h),
                 (cx + hip_half * flare, bottom), (cx - hip_half * flare, bottom)]
        if style in ("dress", "coat"):
            mdraw.polygon(skirt, fill=255)
        else:
            skirt_mask = skirt
    if skirt_mask is not None:
        draw.polygon(skirt_mask, fill=lower_rgb)

    # arms: sleeve colour to the elbow (short) / wrist (long), skin below
    sleeves = upper.get("sleeves", "long")
    arm_top = shoulder_y + 0.005 * h
    wrist_y = hip_y + 0.03 * h
    elbow_y = shoulder_y + 0.45 * (wrist_y - shoulder_y)
    arm_xs = [cx + side_dir * 0.02 * w - arm_w / 2] if side else [cx - shoulder_half - arm_w * 0.35,
                                                                   cx + shoulder_half - arm_w * 0.65]
    for ax in arm_xs:
        draw.rectangle([ax, arm_top, ax + arm_w, wrist_y + 0.03 * h], fill=skin)
        sleeve_end = {"none": arm_top - 1, "short": elbow_y, "long": wrist_y}.get(sleeves, wrist_y)
        if sleeve_end > arm_top:
            mdraw.rectangle([ax, arm_top, ax + arm_w, sleeve_end], fill=255)

    pattern = upper.get("pattern", "solid")
    accent = _clothing_rgb(upper.get("pattern_colour", "white"), rng, cfg) if pattern != "solid" else upper_rgb
    texture = _pattern_layer(image.size, upper_rgb, pattern, accent, rng, unit=0.045 * h + 1)
    image.paste(texture, (0, 0), mask)
    draw = ImageDraw.Draw(image)
    if pattern == "graphic" and not back:
        gx, gy, gr = cx, shoulder_y + 0.11 * h, 0.07 * w + 1
        draw.ellipse([gx - gr, gy - gr, gx + gr, gy + gr], fill=accent)
    if style == "shirt" and not back:
        draw.line([(cx, shoulder_y + 0.01 * h), (cx, hip_y)], fill=_shade(upper_rgb, 0.6), width=1)
        if upper.get("collar", True):
            draw.polygon([(cx - 0.12 * w, shoulder_y - 0.005 * h), (cx, shoulder_y + 0.05 * h),
                          (cx + 0.12 * w, shoulder_y - 0.005 * h)], fill=_shade(upper_rgb, 1.25))
    if upper.get("neckline") == "v" and not back:
        draw.polygon([(cx - 0.08 * w, shoulder_y - 0.002 * h), (cx, shoulder_y + 0.07 * h),
                      (cx + 0.08 * w, shoulder_y - 0.002 * h)], fill=skin)

    # head, hair, face
    neck_w = 0.08 * w
    draw.rectangle([cx - neck_w / 2, head_cy + head_r * 0.6, cx + neck_w / 2, shoulder_y + 1], fill=skin)
    draw.ellipse([cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r], fill=skin)
    if back:
        draw.ellipse([cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r * 0.95], fill=hair)
        if long_hair:
            draw.rectangle([cx - head_r, head_cy, cx + head_r, shoulder_y + 0.08 * h], fill=hair)
    else:
        draw.chord([cx - head_r, head_cy - head_r * 1.05, cx + head_r, head_cy + head_r * 0.5], 180, 360, fill=hair)
        eye_y = head_cy + head_r * 0.1
        eye_xs = [cx + side_dir * head_r * 0.45] if side else [cx - head_r * 0.4, cx + head_r * 0.4]
        if spec.get("glasses"):
            lens = max(1.0, head_r * 0.3 * acc)
            for ex in eye_xs:
                draw.rectangle([ex - lens, eye_y - lens * 0.8, ex + lens, eye_y + lens * 0.8], fill=(12, 12, 14))
            if not side:
                draw.line([(eye_xs[0], eye_y), (eye_xs[1], eye_y)], fill=(12, 12, 14), width=1)
        else:
            for ex in eye_xs:
                draw.point((ex, eye_y), fill=(30, 24, 20))
    if spec.get("hat"):
        hat_rgb = _random_muted(rng, 10, 230)
        brim = head_r * (1.45 if acc >= 1 else 1.2 * acc + 0.2)
        draw.rectangle([cx - brim, head_cy - head_r * 0.55, cx + brim, head_cy - head_r * 0.3], fill=hat_rgb)
        draw.rectangle([cx - head_r * 0.9, head_cy - head_r * (1.0 + 0.35 * acc), cx + head_r * 0.9,
                        head_cy - head_r * 0.45], fill=hat_rgb)

    # bags in front of the body
    if spec.get("backpack"):
        if back:
            draw.rectangle([cx - pack_w / 2, shoulder_y + 0.02 * h, cx + pack_w / 2, shoulder_y + 0.02 * h + pack_h],
                           fill=pack_rgb)
        elif not side:
            for sx in (cx - shoulder_half * 0.55, cx + shoulder_half * 0.55):
                draw.line([(sx, shoulder_y), (sx, shoulder_y + 0.16 * h)], fill=pack_rgb, width=max(1, int(0.05 * w)))
    if spec.get("handbag"):
        bag_rgb = _random_muted(rng, 20, 220)
        hand_side = -side_dir if side else (1 if rng.random() < 0.5 else -1)
        bag_x = cx + hand_side * (shoulder_half + 0.02 * w)
        bw, bh = 0.22 * w * acc, 0.10 * h * acc
        draw.line([(cx + hand_side * shoulder_half * 0.6, shoulder_y), (bag_x, hip_y - 0.02 * h)], fill=bag_rgb, width=1)
        draw.rectangle([bag_x - bw / 2, hip_y - 0.02 * h, bag_x + bw / 2, hip_y - 0.02 * h + bh], fill=bag_rgb)
    if age == "elderly" and rng.random() < 0.3:
        stick_x = cx + (shoulder_half + 0.06 * w) * (1 if rng.random() < 0.5 else -1)
        draw.line([(stick_x, wrist_y), (stick_x, foot_y)], fill=(90, 60, 36), width=1)


# ----------------------------------------------------------------------------------------
# backgrounds and camera effects
# ----------------------------------------------------------------------------------------


def _street_background(size: tuple[int, int], rng: np.random.Generator, cfg: DemoDifficulty,
                       horizon: float) -> Image.Image:
    """Asphalt/pavement with a wall or sky band above ``horizon`` (fraction of the height)."""
    w, h = size
    ground = _random_muted(rng, 70, 150)
    image = Image.new("RGB", size, ground)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, w, h * horizon], fill=_random_muted(rng, 60, 220))
    low, high = cfg.clutter_range
    for _ in range(int(rng.integers(low, high + 1))):
        kind = rng.integers(4)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        colour = _random_muted(rng, 30, 240)
        if kind == 0:    # lane/curb line
            draw.line([(x, y), (x + rng.uniform(-w, w), y + rng.uniform(-0.2, 0.2) * h)], fill=colour,
                      width=int(rng.integers(1, 4)))
        elif kind == 1:  # patch / sign
            sw, sh = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * h
            draw.rectangle([x, y, x + sw, y + sh], fill=colour)
        elif kind == 2:  # bush / puddle
            sw, sh = rng.uniform(0.05, 0.25) * w, rng.uniform(0.05, 0.2) * h
            draw.ellipse([x, y, x + sw, y + sh], fill=colour)
        else:            # pole
            draw.rectangle([x, 0, x + rng.uniform(1, 0.04 * w + 1), h * horizon + rng.uniform(0, 0.3) * h],
                           fill=colour)
    return image


def _occlude(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: np.random.Generator, cfg: DemoDifficulty,
             subject: Box) -> None:
    """A pole, sign or blob in front of part of ``subject``."""
    w, h = size
    x0, y0, x1, y1 = subject
    ow = rng.uniform(0.06, max(0.07, cfg.occlusion_max_frac)) * w
    ox = rng.uniform(x0 - ow / 2, x1 - ow / 2)
    colour = _random_muted(rng, 20, 220)
    kind = rng.integers(3)
    if kind == 0:    # pole from the top
        draw.rectangle([ox, 0, ox + ow * 0.4, h], fill=colour)
    elif kind == 1:  # sign / box from the bottom
        draw.rectangle([ox, rng.uniform(y0, (y0 + y1) / 2), ox + ow, h], fill=colour)
    else:            # rounded blob (bush, passer-by)
        oy = rng.uniform(y0, y1)
        draw.ellipse([ox, oy - ow / 2, ox + ow, oy + ow * 1.5], fill=colour)


def apply_camera(image: Image.Image, rng: np.random.Generator, cfg: DemoDifficulty,
                 allow_low_light: bool = True) -> Image.Image:
    """Lighting (incl. low light), white balance cast, sensor noise and blur."""
    arr = np.asarray(image, dtype=np.float32)
    if allow_low_light and rng.random() < cfg.low_light_prob:
        factor = rng.uniform(*cfg.low_light_range)
        tint = np.asarray([0.85, 0.92, 1.12], dtype=np.float32)
    else:
        factor = rng.uniform(*cfg.brightness_range)
        tint = np.ones(3, dtype=np.float32)
    gain = (1.0 + rng.uniform(-cfg.colour_cast, cfg.colour_cast, 3)).astype(np.float32) * tint * factor
    arr = arr * gain
    if cfg.noise_std > 0:
        arr += rng.normal(0.0, cfg.noise_std, arr.shape).astype(np.float32)
    out = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < cfg.blur_prob:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, max(0.31, cfg.blur_max_radius))))
    return out


def encode_image(image: Image.Image, rng: np.random.Generator, cfg: DemoDifficulty, fmt: str) -> bytes:
    """JPEG at a random quality; for ``png`` the JPEG artefacts are kept and stored losslessly."""
    low, high = cfg.jpeg_quality_range
    quality = int(rng.integers(low, high + 1))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    if fmt == "jpg":
        return buffer.getvalue()
    if fmt != "png":
        raise ValueError(f"unknown image format {fmt!r}")
    buffer.seek(0)
    decoded = Image.open(buffer).convert("RGB")
    out = io.BytesIO()
    decoded.save(out, "PNG", compress_level=1)  # noisy images barely compress: favour speed
    return out.getvalue()


# ----------------------------------------------------------------------------------------
# whole images
# ----------------------------------------------------------------------------------------


def render_vehicle_crop(spec: Mapping[str, Any], rng: np.random.Generator, cfg: DemoDifficulty) -> Image.Image:
    """A wide traffic-camera crop (aspect 1.4-2.2, 96-160 px wide) of one vehicle."""
    vehicle_type = spec["type"]
    width = int(rng.integers(96, 161))
    box_aspect = VEHICLE_BOX_ASPECT[vehicle_type] * rng.uniform(0.92, 1.08)
    aspect = float(np.clip(box_aspect * rng.uniform(0.85, 0.98), 1.4, 2.2))
    height = int(round(width / aspect))
    image = _street_background((width, height), rng, cfg, horizon=rng.uniform(0.0, 0.35))
    draw = ImageDraw.Draw(image)
    if rng.random() < cfg.partial_object_prob:  # another vehicle cut by the border
        other_w = rng.uniform(0.5, 0.9) * width
        other_type = list(VEHICLE_BOX_ASPECT)[int(rng.integers(len(VEHICLE_BOX_ASPECT)))]
        left = -other_w * rng.uniform(0.55, 0.85) if rng.random() < 0.5 else width - other_w * rng.uniform(0.15, 0.45)
        bottom = height * rng.uniform(0.6, 0.9)
        other_rgb = jitter_colour(list(VEHICLE_COLOUR_RGB.values())[int(rng.integers(len(VEHICLE_COLOUR_RGB)))],
                                  rng, cfg)
        draw_vehicle(draw, _vehicle_box_in(other_type, other_w, bottom, left), other_type,
                     other_rgb, rng, cfg, facing_right=bool(rng.random() < 0.5))
    margin_l, margin_r = rng.uniform(0.02, 0.08, 2) * width
    box_w = width - margin_l - margin_r
    box_h = min(box_w / box_aspect, height * rng.uniform(0.78, 0.92))
    box_w = box_h * box_aspect
    left = rng.uniform(0.02 * width, max(0.021 * width, width - box_w - 0.02 * width))
    bottom = height - rng.uniform(0.02, 0.08) * height
    box = (left, bottom - box_h, left + box_w, bottom)
    body = jitter_colour(VEHICLE_COLOUR_RGB[spec["color"]], rng, cfg)
    draw_vehicle(draw, box, vehicle_type, body, rng, cfg, brand=spec.get("brand"),
                 facing_right=bool(rng.random() < 0.5))
    if rng.random() < cfg.occlusion_prob:
        _occlude(draw, (width, height), rng, cfg, box)
    return apply_camera(image, rng, cfg)


def render_person_crop(spec: Mapping[str, Any], rng: np.random.Generator, cfg: DemoDifficulty) -> Image.Image:
    """A tall pedestrian crop (aspect 0.35-0.5, 48-64 px wide)."""
    width = int(rng.integers(48, 65))
    height = int(round(width / rng.uniform(0.35, 0.5)))
    image = _street_background((width, height), rng, cfg, horizon=rng.uniform(0.3, 0.7))
    if rng.random() < cfg.partial_object_prob:  # another pedestrian cut by the border
        other = person_spec_from_flags(sample_person_flags(rng), rng)
        ow = width * rng.uniform(0.7, 0.9)
        ox = -ow * rng.uniform(0.55, 0.8) if rng.random() < 0.5 else width - ow * rng.uniform(0.2, 0.45)
        oy = height * rng.uniform(-0.05, 0.1)
        draw_person(image, (ox, oy, ox + ow, oy + height * 0.9), other, rng, cfg)
    fig_w = width * rng.uniform(0.72, 0.86)
    fig_h = height * rng.uniform(0.88, 0.96)
    fx = (width - fig_w) / 2 + rng.normal(0, 0.03 * width)
    fy = (height - fig_h) * rng.uniform(0.2, 0.8)
    box = (fx, fy, fx + fig_w, fy + fig_h)
    draw_person(image, box, spec, rng, cfg)
    if rng.random() < cfg.occlusion_prob:
        _occlude(ImageDraw.Draw(image), (width, height), rng, cfg, box)
    return apply_camera(image, rng, cfg)


def render_garment(spec: Mapping[str, Any], rng: np.random.Generator, cfg: DemoDifficulty) -> Image.Image:
    """A product-style photo (64 px wide, portrait) of a model wearing the garment."""
    width = 64
    height = int(round(width / rng.uniform(0.6, 0.8)))
    backdrop = _clip_rgb(np.asarray([236, 234, 230]) - rng.uniform(0, 40, 3))
    image = Image.new("RGB", (width, height), backdrop)
    fig_w = width * rng.uniform(0.55, 0.68)
    fig_h = height * rng.uniform(0.9, 0.97)
    fx = (width - fig_w) / 2 + rng.normal(0, 0.02 * width)
    fy = (height - fig_h) / 2
    draw_person(image, (fx, fy, fx + fig_w, fy + fig_h), spec, rng, cfg)
    return apply_camera(image, rng, cfg, allow_low_light=False)


def _scene_background(size: tuple[int, int], background: str, night: bool, rng: np.random.Generator,
                      cfg: DemoDifficulty) -> tuple[Image.Image, float, list[tuple[float, float]]]:
    """Draw a scene backdrop; returns (image, road line y, light points for night glow)."""
    w, h = size
    horizon = rng.uniform(0.3, 0.45) * h
    sky = {"snowy road": (200, 204, 210)}.get(background, _clip_rgb(np.asarray([130, 180, 230]) + rng.normal(0, 12, 3)))
    ground = {"city street": (96, 96, 100), "highway": (88, 88, 92), "parking lot": (108, 108, 110),
              "countryside": (74, 140, 62), "snowy road": (236, 238, 242)}[background]
    image = Image.new("RGB", size, jitter_colour(ground, rng, cfg, 0.6))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, w, horizon], fill=sky)
    lights: list[tuple[float, float]] = []
    if background == "city street":
        x = -rng.uniform(0, 10)
        while x < w:
            bw, bh = rng.uniform(0.12, 0.3) * w, rng.uniform(0.4, 1.0) * horizon
            draw.rectangle([x, horizon - bh, x + bw, horizon], fill=_random_muted(rng, 60, 200))
            for wy in np.arange(horizon - bh + 3, horizon - 3, 6):
                for wx in np.arange(x + 2, x + bw - 3, 5):
                    draw.rectangle([wx, wy, wx + 2, wy + 2], fill=(60, 70, 90))
                    if night and rng.random() < 0.3:
                        lights.append((float(wx + 1), float(wy + 1)))
            x += bw + rng.uniform(0, 4)
        draw.rectangle([0, horizon, w, horizon + 0.06 * h], fill=(150, 148, 140))  # sidewalk
    elif background == "highway":
        draw.polygon([(0, horizon), (w * 0.3, horizon - 0.12 * h), (w * 0.7, horizon)], fill=(90, 120, 90))
        draw.line([(0, horizon + 0.05 * h), (w, horizon + 0.05 * h)], fill=(170, 170, 170), width=2)
        lane_y = horizon + 0.35 * (h - horizon)
        for x in np.arange(rng.uniform(0, 12), w, 16):
            draw.rectangle([x, lane_y, x + 8, lane_y + 1.5], fill=(235, 235, 235))
    elif background == "parking lot":
        draw.rectangle([0, horizon - 0.2 * h, w, horizon], fill=_random_muted(rng, 90, 180))
        for x in np.arange(rng.uniform(0, 20), w + 20, 22):
            draw.line([(x, horizon + 2), (x - 10, h)], fill=(230, 230, 225), width=1)
    elif background == "countryside":
        draw.rectangle([0, horizon + 0.3 * (h - horizon), w, horizon + 0.6 * (h - horizon)], fill=(110, 104, 96))
        for _ in range(int(rng.integers(2, 6))):
            tx, tr = rng.uniform(0, w), rng.uniform(0.05, 0.1) * h
            draw.rectangle([tx - 1, horizon - tr, tx + 1, horizon + 2], fill=(90, 60, 30))
            draw.ellipse([tx - tr, horizon - 2.6 * tr, tx + tr, horizon - 0.6 * tr], fill=(40, 110, 50))
    elif background == "snowy road":
        draw.rectangle([0, horizon + 0.3 * (h - horizon), w, horizon + 0.7 * (h - horizon)], fill=(190, 192, 198))
        for _ in range(int(0.02 * w * h)):
            sx, sy = rng.uniform(0, w), rng.uniform(0, h)
            draw.point((sx, sy), fill=(250, 250, 252))
    if night:
        for x in np.arange(rng.uniform(5, 30), w, rng.uniform(30, 60)):   # street lamps
            draw.line([(x, horizon - 0.25 * h), (x, horizon + 0.05 * h)], fill=(60, 60, 64), width=1)
            lights.append((float(x), float(horizon - 0.25 * h)))
    return image, horizon, lights


def _glow(draw: ImageDraw.ImageDraw, point: tuple[float, float], radius: float, rgb: RGB) -> None:
    x, y = point
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=rgb)


def render_scene(spec: Mapping[str, Any], rng: np.random.Generator, cfg: DemoDifficulty) -> Image.Image:
    """A vehicle scene: ``count`` vehicles of one type/colour, facing ``direction``, on a
    ``background``, by day or night, ``close-up`` or ``distant`` (CIRR/CIRCO images)."""
    width = int(rng.integers(112, 145))
    height = int(round(width * rng.uniform(0.66, 0.8)))
    night = spec["time"] == "night"
    image, horizon, lights = _scene_background((width, height), spec["background"], night, rng, cfg)
    draw = ImageDraw.Draw(image)
    count = int(spec["count"])
    vehicle_type = spec["type"]
    close = spec["view"] == "close-up"
    facing_right = spec["direction"] == "right"
    if close:
        each_w = width * (rng.uniform(0.62, 0.8) if count == 1 else rng.uniform(0.42, 0.52))
    else:
        each_w = width * rng.uniform(0.2, 0.28)
    each_w = min(each_w, width * 0.95)
    boxes = []
    if close:
        span = width - each_w
        lefts = [span * (i + rng.uniform(0.1, 0.4)) / max(1, count) for i in range(count)] if count > 1 \
            else [rng.uniform(0.05, 0.95) * span]
        bottoms = [height - rng.uniform(0.02, 0.08) * height - 0.06 * height * i for i in range(count)][::-1]
    else:
        slot = width / count
        lefts = [slot * i + rng.uniform(0, max(1.0, slot - each_w)) for i in range(count)]
        road_y = horizon + rng.uniform(0.35, 0.75) * (height - horizon)
        bottoms = [road_y + rng.normal(0, 0.03 * height) for _ in range(count)]
    order = sorted(range(count), key=lambda i: bottoms[i])  # far (higher) vehicles first
    base_rgb = VEHICLE_COLOUR_RGB[spec["color"]]
    head_points: list[tuple[float, float]] = []
    for i in order:
        box = _vehicle_box_in(vehicle_type, each_w, bottoms[i], lefts[i])
        boxes.append(box)
        body = jitter_colour(base_rgb, rng, cfg, 0.6)
        head_points += draw_vehicle(draw, box, vehicle_type, body, rng, cfg, facing_right=facing_right,
                                    lights_on=night)
    if night:
        arr = np.asarray(image, dtype=np.float32) * np.asarray([0.5, 0.52, 0.66], dtype=np.float32)
        image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for point in lights:
            _glow(draw, point, 1.5, (255, 236, 170))
        for point in head_points:
            _glow(draw, point, max(2.0, each_w * 0.04), (255, 246, 200))
    if rng.random() < cfg.occlusion_prob * 0.5 and boxes:
        _occlude(draw, (width, height), rng, cfg, boxes[-1])
    return apply_camera(image, rng, cfg, allow_low_light=False)


RENDERERS = {
    "vehicle": render_vehicle_crop,
    "person": render_person_crop,
    "garment": render_garment,
    "scene": render_scene,
}
