"""The shape config.json gives every tensor a command transforms, checked against the tensor.

FFN projections ([intermediate, hidden], the down projection transposed, a fused gate+up
twice as tall), attention projections (q: heads x head_dim rows, k and v: KV heads x head_dim,
o transposed from q) and the embeddings and LM head ([vocab, hidden]). A field config.json
leaves out is not assumed (hub configs omit the config class's defaults, which differ by
family): the axes it sizes are not checked, except head_dim, which is then read off the first
layer's q projection (its rows must be a whole number of heads).
"""

from __future__ import annotations

from dataclasses import dataclass

from matcli.arch import Architecture, config_int, config_per_layer
from matcli.errors import MatcliError

# One axis of an expected shape: its size (None: config.json does not say) and where it is from.
Axis = tuple["int | None", str]


@dataclass(frozen=True)
class ConfigDims:
    """The sizes config.json gives, each None when it does not give it."""

    hidden: int | None
    ffn: list[int | None]  # one per layer
    heads: int | None
    kv_heads: int | None
    head_dim: int | None
    vocab: int | None


def config_dims(arch: Architecture, text_config: dict, num_layers: int) -> ConfigDims:
    """The sizes in config.json (its language-model part), each read by a typed accessor."""
    keys = arch.family.config
    return ConfigDims(
        hidden=config_int(text_config, keys.hidden_size, minimum=1, default=None),
        ffn=config_per_layer(text_config, keys.intermediate_size, num_layers, default=None),
        heads=config_int(text_config, keys.num_heads, minimum=1, default=None),
        kv_heads=config_int(text_config, keys.num_kv_heads, minimum=1, default=None),
        head_dim=config_int(text_config, keys.head_dim, minimum=1, default=None),
        vocab=config_int(text_config, keys.vocab_size, minimum=1, default=None),
    )


def check_shapes(
    arch: Architecture,
    text_config: dict,
    num_layers: int,
    shapes: dict[str, tuple[int, ...]],
    suffix: str = ".weight",
    holds: str = "has shape",
) -> None:
    """Refuse the first tensor whose shape disagrees with config.json. `shapes` maps tensor
    names (a module name + `suffix`: `.weight`, or a parent's `.weight_shape`) to shapes;
    tensors the config says nothing about are not looked at. `holds` says what the shape
    is in the message (a parent's weight_shape holds one)."""
    dims = config_dims(arch, text_config, num_layers)
    modules = {n.removesuffix(suffix): n for n in shapes if n.endswith(suffix)}
    dims = _with_head_dim(arch, dims, modules, shapes)
    for module, want in expected_shapes(arch, dims, num_layers).items():
        name = modules.get(module)
        if name is None:
            continue
        shape = tuple(shapes[name])
        if len(shape) != len(want) or any(
            s is not None and s != n for (s, _), n in zip(want, shape)
        ):
            expected = ", ".join(f"{s} ({key})" if s is not None else "any" for s, key in want)
            raise MatcliError(
                f"{name} {holds} {list(shape)} but config.json says [{expected}]; the "
                "checkpoint is inconsistent: fix config.json or re-download the checkpoint"
            )


def _with_head_dim(
    arch: Architecture, dims: ConfigDims, modules: dict[str, str], shapes: dict
) -> ConfigDims:
    """Without a head_dim in config.json, the first q projection's rows / heads."""
    if dims.head_dim is not None or dims.heads is None:
        return dims
    q = arch.family.attention[0]
    name = next((modules[m] for m in modules if (arch.split_layer(m) or (0, ""))[1] == q), None)
    if name is None or not shapes[name]:
        return dims
    rows = shapes[name][0]
    if rows % dims.heads:
        raise MatcliError(
            f"{name} has {rows} rows, not a whole number of config.json's "
            f"num_attention_heads ({dims.heads}); fix config.json or re-download the checkpoint"
        )
    return ConfigDims(**{**dims.__dict__, "head_dim": rows // dims.heads})


def expected_shapes(arch: Architecture, dims: ConfigDims, num_layers: int) -> dict[str, list]:
    """{module name: [Axis, ...]} for every tensor whose shape config.json determines."""
    family, keys = arch.family, arch.family.config
    hidden: Axis = (dims.hidden, keys.hidden_size)
    heads_dim = dims.heads * dims.head_dim if dims.heads and dims.head_dim else None
    kv_dim = dims.kv_heads * dims.head_dim if dims.kv_heads and dims.head_dim else None
    q_axis: Axis = (heads_dim, f"{keys.num_heads} x {keys.head_dim}")
    kv_axis: Axis = (kv_dim, f"{keys.num_kv_heads} x {keys.head_dim}")
    q, k, v, o = family.attention
    ffn = family.ffn
    expected = {}
    for layer in range(num_layers):
        width = dims.ffn[layer]
        ffn_axis: Axis = (width, f"{keys.intermediate_size}[{layer}]")
        fused_axis: Axis = (2 * width if width else None, f"2 x {keys.intermediate_size}[{layer}]")
        per_layer = {
            ffn.gate: [ffn_axis, hidden],
            ffn.up: [ffn_axis, hidden],
            ffn.down: [hidden, ffn_axis],
            ffn.fused_gate_up: [fused_axis, hidden],
            q: [q_axis, hidden],
            k: [kv_axis, hidden],
            v: [kv_axis, hidden],
            o: [hidden, q_axis],
        }
        expected.update(
            {arch.layer_name(layer, rel): axes for rel, axes in per_layer.items() if rel}
        )
    vocab: Axis = (dims.vocab, keys.vocab_size)
    for module in (*family.embeddings, family.lm_head):
        if module:
            expected[module] = [vocab, hidden]
    return expected
