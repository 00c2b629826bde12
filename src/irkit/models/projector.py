"""Vision projector: a residual MLP on image embeddings (docs/methods.md §E).

Applied to query (reference) and gallery image embeddings alike, ``[..., D] -> [..., D]``.
Two structures, chosen by ``style``:

* ``"published"`` — the published ``ResidualMLP(expansion_rate=16, n=4)`` of the
  VisionProjector_ZSCIR fork: ``y = x + MLP_4(MLP_3(MLP_2(MLP_1(x))))`` with each
  ``MLP = Linear(D, 16D) -> GELU (tanh approximation) -> Linear(16D, D)``, ONE residual
  around the four, then dropout 0.5 (inactive in eval mode). A random start is flax's:
  LeCun-normal weights, zero biases. Its identity start zero-initialises the last Linear of
  the last MLP (then ``y = x``; gradients reach that layer first, the others from step 2).
  Published flax parameters load with :func:`load_flax_projector_params`; the fork's fixed
  random projector (re-created from ``PRNGKey(0)`` at every call) is rebuilt exactly by
  :func:`published_prngkey0_params` when jax and flax are installed (``pip install irkit[jax]``).
* ``"irkit"`` (the default, and what every checkpoint saved before ``projector_style``
  existed holds) — ``depth`` blocks of ``x + Linear(16D, D)(GELU(Linear(D, 16D)(x)))``, a
  residual per block and exact GELU; ``zero_init`` starts every block as the identity, a
  random start is PyTorch's default Linear init.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from irkit.errors import InputError
from irkit.models.layers import ResidualMlpBlock, init_linear_lecun

#: Projector structures: irkit's per-block residual (default) and the published one.
PROJECTOR_STYLES = ("irkit", "published")


class TanhGeluMlp(nn.Module):
    """``fc2(GELU_tanh(fc1(x)))``: one published projector MLP, ``[..., D] -> [..., D]``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionProjector(nn.Module):
    """``[..., D] -> [..., D]``: ``depth`` MLPs of hidden width ``ratio * D`` (see the module doc).

    ``style="irkit"`` keeps ``self.blocks`` (residual per block); ``style="published"``
    keeps ``self.mlps`` (one residual around all) and ``self.drop`` (``dropout``, eval: off).
    """

    def __init__(self, dim: int, depth: int = 4, ratio: int = 16, act: str = "gelu", zero_init: bool = True,
                 style: str = "irkit", dropout: float = 0.5) -> None:
        super().__init__()
        if style not in PROJECTOR_STYLES:
            raise InputError(f"unknown projector style {style!r}; expected one of {', '.join(PROJECTOR_STYLES)}",
                             field="projector_style")
        self.dim, self.depth, self.ratio, self.style = dim, depth, ratio, style
        if style == "irkit":
            self.blocks = nn.Sequential(*[ResidualMlpBlock(dim, ratio * dim, act=act, zero_init=zero_init)
                                          for _ in range(depth)])
            return
        self.mlps = nn.ModuleList([TanhGeluMlp(dim, ratio * dim) for _ in range(depth)])
        self.drop = nn.Dropout(dropout)
        init_linear_lecun(self.mlps)  # flax's Dense init: LeCun-normal weights, zero biases
        if zero_init:
            last = self.mlps[-1].fc2
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        if self.style == "irkit":
            return self.blocks(image_embeddings)
        hidden = image_embeddings
        for mlp in self.mlps:
            hidden = mlp(hidden)
        return self.drop(image_embeddings + hidden)


def flax_projector_names(depth: int = 4) -> dict[str, str]:
    """Published flax leaf name -> irkit state-dict name of a ``style="published"`` projector.

    Flax names: ``MLP_<i>/Dense_0`` (D -> 16D) and ``MLP_<i>/Dense_1`` (16D -> D), each with
    ``kernel [in, out]`` and ``bias [out]``.
    """
    names = {}
    for i in range(depth):
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            names[f"MLP_{i}/{dense}/kernel"] = f"mlps.{i}.{fc}.weight"
            names[f"MLP_{i}/{dense}/bias"] = f"mlps.{i}.{fc}.bias"
    return names


def load_flax_projector_params(projector: VisionProjector, params: Mapping[str, np.ndarray],
                               source: str = "flax parameters") -> VisionProjector:
    """Copy published flax ResidualMLP ``params`` (flattened ``a/b/c`` names, optionally under
    ``params/``; kernels ``[in, out]``, transposed here) into a ``style="published"`` projector.

    A missing, extra or mis-shaped leaf is an :class:`InputError` naming the first one.
    """
    if projector.style != "published":
        raise InputError("flax ResidualMLP parameters load into a projector of style 'published'; "
                         f"this one is {projector.style!r}", path=source, field="projector_style")
    flat = {name[len("params/"):] if name.startswith("params/") else name: value for name, value in params.items()}
    names = flax_projector_names(projector.depth)
    state = projector.state_dict()
    for flax_name, torch_name in names.items():
        if flax_name not in flat:
            raise InputError(f"missing leaf {flax_name!r} of the published ResidualMLP (n={projector.depth})",
                             path=source, field=flax_name)
        value = np.asarray(flat[flax_name], dtype=np.float32)
        if flax_name.endswith("kernel"):
            value = value.T
        expected = tuple(state[torch_name].shape)
        if value.shape != expected:
            shown = value.T.shape if flax_name.endswith("kernel") else value.shape
            want = expected[::-1] if flax_name.endswith("kernel") else expected
            raise InputError(f"leaf {flax_name!r} has shape {list(shown)}; expected {list(want)} "
                             f"(D={projector.dim}, expansion {projector.ratio})", path=source, field=flax_name)
        state[torch_name] = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))
    extra = sorted(set(flat) - set(names))
    if extra:
        raise InputError(f"unexpected leaf {extra[0]!r} ({len(extra)} in all); a published ResidualMLP "
                         f"(n={projector.depth}) has only MLP_<i>/Dense_<0|1>/{{kernel,bias}}", path=source,
                         field=extra[0])
    projector.load_state_dict(state)
    return projector


def published_prngkey0_params(dim: int, depth: int = 4, ratio: int = 16) -> dict[str, np.ndarray]:
    """The published fork's fixed random projector at width ``dim``: flax parameters initialised
    from ``jax.random.PRNGKey(0)`` exactly as the fork does (``ResidualMLP.init(PRNGKey(0),
    image_embeddings)``; the values do not depend on the batch size), with jax's pre-0.5 key
    derivation (``threefry_partitionable=False``) of the fork's time.

    Returns flattened ``MLP_<i>/Dense_<j>/{kernel,bias}`` arrays for
    :func:`load_flax_projector_params`. Needs the optional extra ``irkit[jax]`` (jax + flax);
    without it, an :class:`InputError` saying so.
    """
    try:
        import jax
        import jax.numpy as jnp
        from flax import linen
    except ImportError:
        raise InputError("the published PRNGKey(0) projector is re-created with jax's initialisers: "
                         "install the optional extra, pip install 'irkit[jax]' (jax and flax)",
                         field="projector_init") from None

    class PublishedMlp(linen.Module):
        hidden: int

        @linen.compact
        def __call__(self, x):  # names and parameter order as in flax's auto-named Dense layers
            width = x.shape[-1]
            x = linen.Dense(self.hidden, name="Dense_0")(x)
            return linen.Dense(width, name="Dense_1")(linen.gelu(x))

    class PublishedResidualMlp(linen.Module):
        @linen.compact
        def __call__(self, x):
            hidden = x
            for i in range(depth):
                hidden = PublishedMlp(ratio * x.shape[-1], name=f"MLP_{i}")(hidden)
            return x + hidden

    partitionable = getattr(jax, "threefry_partitionable", None)
    example = jnp.zeros((1, dim), dtype=jnp.float32)
    if partitionable is not None:
        with partitionable(False):
            variables = PublishedResidualMlp().init(jax.random.PRNGKey(0), example)
    else:  # pragma: no cover - jax before the flag existed derives keys the old way anyway
        variables = PublishedResidualMlp().init(jax.random.PRNGKey(0), example)
    flat: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"]):
        flat["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf, dtype=np.float32)
    return flat


def published_prngkey0_projector(dim: int, depth: int = 4, ratio: int = 16) -> VisionProjector:
    """A frozen ``style="published"`` projector holding the fork's PRNGKey(0) parameters
    (needs ``irkit[jax]``); eval mode, no gradients."""
    projector = VisionProjector(dim, depth=depth, ratio=ratio, style="published", zero_init=False)
    load_flax_projector_params(projector, published_prngkey0_params(dim, depth, ratio), "jax PRNGKey(0)")
    projector.requires_grad_(False)
    return projector.eval()
