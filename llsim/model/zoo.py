"""The model zoo: decoder-only transformer configs with their published dimensions.

Nothing is downloaded: llsim builds these models itself, either as an analytical module graph
(:mod:`llsim.model.analytic`, instant for 7B-class models) or as an ONNX file with seeded random
weights (:mod:`llsim.model.builder`). Dimensions are the ones in each model's published
``config.json`` (Hugging Face model cards: bigscience/bloom-*, openai-community/gpt2*,
meta-llama/Llama-3.2-*, meta-llama/Llama-2-7b-hf).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from llsim.errors import LLSimError


@dataclass(frozen=True)
class ModelConfig:
    name: str
    family: str  # "bloom" | "gpt2" | "llama"
    hidden: int
    layers: int
    heads: int
    vocab: int
    ffn: int  # intermediate size
    kv_heads: int | None = None  # grouped-query attention (llama); None = heads
    max_positions: int = 2048  # learned positions (gpt2) / context limit
    tied_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    published_params: int | None = None  # from the model card, for tests

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def n_modules(self) -> int:
        return self.layers + 2  # embedding, blocks, final norm + head


def _bloom(name, h, L, nh, published=None):
    return ModelConfig(name, "bloom", h, L, nh, 250880, 4 * h, tied_embeddings=True, published_params=published)


def _gpt2(name, h, L, nh, published=None):
    return ModelConfig(name, "gpt2", h, L, nh, 50257, 4 * h, max_positions=1024, published_params=published)


ZOO: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        # BLOOM (ALiBi, LayerNorm after the embedding, GeLU MLP, fused QKV with biases)
        _bloom("bloom-560m", 1024, 24, 16, 559_214_592),
        _bloom("bloom-1b1", 1536, 24, 16, 1_065_314_304),
        _bloom("bloom-1b7", 2048, 24, 16, 1_722_408_960),
        _bloom("bloom-3b", 2560, 30, 32, 3_002_557_440),
        _bloom("bloom-7b1", 4096, 30, 32, 7_069_016_064),
        # GPT-2 (learned positions, tied head)
        _gpt2("gpt2-small", 768, 12, 12, 124_439_808),
        _gpt2("gpt2-medium", 1024, 24, 16, 354_823_168),
        _gpt2("gpt2-large", 1280, 36, 20, 774_030_080),
        _gpt2("gpt2-xl", 1600, 48, 25, 1_557_611_200),
        # Llama-style (RMSNorm, rotary, SwiGLU, grouped KV heads)
        ModelConfig("llama-3.2-1b", "llama", 2048, 16, 32, 128256, 8192, kv_heads=8, max_positions=131072,
                    tied_embeddings=True, rope_theta=500000.0, published_params=1_235_814_400),
        ModelConfig("llama-3.2-3b", "llama", 3072, 28, 24, 128256, 8192, kv_heads=8, max_positions=131072,
                    tied_embeddings=True, rope_theta=500000.0, published_params=3_212_749_824),
        ModelConfig("llama-2-7b", "llama", 4096, 32, 32, 32000, 11008, kv_heads=32, max_positions=4096,
                    tied_embeddings=False, published_params=6_738_415_616),
        # Shapes of models with published phone tokens/s (used to calibrate and check phone profiles);
        # Qwen2's q/k/v biases (57k params) are not modelled.
        ModelConfig("qwen2-1.5b", "llama", 1536, 28, 12, 151936, 8960, kv_heads=2, max_positions=32768,
                    tied_embeddings=True, rope_theta=1e6, norm_eps=1e-6, published_params=1_543_714_304),
        ModelConfig("minicpm-2b", "llama", 2304, 40, 36, 122753, 5760, kv_heads=36, max_positions=4096,
                    tied_embeddings=True, published_params=2_724_880_896),
        # Tiny variants for tests (same code paths, toy sizes)
        ModelConfig("tiny-bloom", "bloom", 64, 3, 4, 256, 256),
        ModelConfig("tiny-gpt2", "gpt2", 64, 3, 4, 256, 256, max_positions=128),
        ModelConfig("tiny-llama", "llama", 64, 3, 4, 256, 128, kv_heads=2, max_positions=128),
        # Small variants: runnable ONNX of realistic shape (tens of MB). small-gpt2 is what the profiler
        # fits on; small-bloom and small-llama have other widths so they can check the fit out of sample.
        ModelConfig("small-gpt2", "gpt2", 256, 8, 8, 8192, 1024, max_positions=1024),
        ModelConfig("small-bloom", "bloom", 384, 6, 6, 6000, 1536),
        ModelConfig("small-llama", "llama", 320, 6, 5, 6000, 896, kv_heads=1, max_positions=4096),
    ]
}


def get_config(name: str) -> ModelConfig:
    key = name.lower()
    if key not in ZOO:
        raise LLSimError(f"unknown model '{name}': not a zoo name (see `llsim model list`) and not an .onnx path")
    return ZOO[key]


def with_layers(cfg: ModelConfig, layers: int) -> ModelConfig:
    return replace(cfg, layers=layers, name=f"{cfg.name}-L{layers}")
