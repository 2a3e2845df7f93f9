"""Outside the architecture adapters (`ckptstudy.model.arch`) and the model builders, no module names a part of one
architecture: every measurement reads a model through `ModelParts`. Checked on the syntax tree (attribute accesses
and string constants, which getattr and hook paths use), so comments and docstrings may still mention the names."""

from __future__ import annotations

import ast
from pathlib import Path

import ckptstudy
from ckptstudy.model.arch import FAMILIES

SRC = Path(ckptstudy.__file__).parent
# modules allowed to name architecture parts: the adapters, and the builders of random-init models and configs
ALLOWED = ("model/arch/", "model/neox.py", "model/build.py")
PARTS = {
    "gpt_neox": {
        "gpt_neox",
        "dense_4h_to_h",
        "dense_h_to_4h",
        "final_layer_norm",
        "embed_out",
        "query_key_value",
        "use_parallel_residual",
        "rotary_emb",
        "attention.dense",
    },
    "llama": {
        "self_attn",
        "o_proj",
        "down_proj",
        "up_proj",
        "gate_proj",
        "q_proj",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        "input_layernorm",
    },
    "gpt2": {"c_proj", "c_attn", "c_fc", "ln_f", "ln_1", "ln_2", "wte", "wpe"},
}
NAMES = set().union(*PARTS.values())
FAMILY_NAMES = set(FAMILIES)  # "gpt_neox" is also a family's name: a value of model.arch (and of the Arch enum)


def named_parts(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every attribute access, and every string constant, that is an architecture part's name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in NAMES:
            if not (node.attr in FAMILY_NAMES and isinstance(node.value, ast.Name) and node.value.id == "Arch"):
                found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value not in FAMILY_NAMES:
            words = set(node.value.replace(".", " ").split()) | {node.value}
            if words & NAMES and len(node.value) < 60 and " " not in node.value.strip():
                found.append((node.lineno, node.value))
    return found


def modules_outside_the_adapters() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if not str(p.relative_to(SRC)).startswith(ALLOWED)]


def test_no_module_outside_the_adapters_names_an_architecture_part():
    offenders = {
        str(path.relative_to(SRC)): hits
        for path in modules_outside_the_adapters()
        if (hits := named_parts(ast.parse(path.read_text())))
    }
    assert offenders == {}


def test_the_scan_finds_a_part_named_by_attribute_or_by_string():
    # the opposite case: code that reaches into GPT-NeoX, Llama or GPT-2 directly is caught, however it is written
    code = (
        "a = model.gpt_neox.layers[0].mlp.dense_4h_to_h\n"
        "b = getattr(layer, 'o_proj')\n"
        "c = attribute(model, 'transformer.ln_f')\n"
        "d = model.parts.out_projs  # o_proj in a comment is fine\n"
        "e = Arch.gpt_neox if family == 'gpt_neox' else None\n"
        "'''a docstring may say the c_proj of GPT-2'''\n"
    )
    assert sorted(named_parts(ast.parse(code))) == [
        (1, "dense_4h_to_h"),
        (1, "gpt_neox"),
        (2, "o_proj"),
        (3, "transformer.ln_f"),
    ]
    assert len(modules_outside_the_adapters()) > 50  # the scan covers the package, not an empty directory
