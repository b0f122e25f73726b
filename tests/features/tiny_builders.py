"""Tiny builders of the LVLM families that only the tests use (Qwen2.5-VL, LLaVA, LLaVA-NeXT, SmolVLM).

Importing this module registers them in :data:`rmm.features.tiny.TINY_BUILDERS`, so ``tiny:llava`` and the others
resolve like the product's ``tiny:qwen2-vl``. They check that every family rmm supports embeds and describes
through the one hub code path; no config, benchmark or quickstart of the product runs them, so they live here.
Only in-process tests use them: a Ray worker would not have imported this module.
"""

from __future__ import annotations

from pathlib import Path

from rmm.features.tiny import build_qwen_vl, byte_level_tokenizer, save_model, seeded, tiny_builder

#: The architectures this module registers.
TEST_ARCHS = ("qwen2.5-vl", "llava", "llava-next", "smolvlm")

@tiny_builder("qwen2.5-vl", version=1)
def build_qwen2_5_vl(target: Path) -> None:
    """Qwen2.5-VL: the Qwen2-VL text model and processor with the 2.5 vision tower (windowed attention, SwiGLU,
    RMSNorm; one full-attention block)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    build_qwen_vl(target, Qwen2_5_VLProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                  {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                   "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
                   "fullatt_block_indexes": [1]})


# llava-hf/llava-1.5-*-hf's template: images first, then the text, "USER:" / "ASSISTANT:" turns.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# llava-hf/llava-v1.6-mistral-7b-hf's template ([INST] turns).
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% if message['role'] == 'system' %}{{ '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}"
    "{{ ' [/INST]' }}{% else %}{{ '</s>' }}{% endif %}{% endfor %}"
)
LLAVA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<image>", "<pad>")


def _llava_parts() -> tuple[object, dict[str, int], dict, dict]:
    """Tokenizer, token ids, text config and CLIP vision config shared by LLaVA and LLaVA-NeXT."""
    tokenizer = byte_level_tokenizer(LLAVA_SPECIAL_TOKENS, pad="<pad>", eos="</s>", bos="<s>",
                                     extra_special=("<image>",))
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in LLAVA_SPECIAL_TOKENS}
    text = {"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 4096, "bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"],
            "pad_token_id": ids["<pad>"]}
    # A CLIP tower with a CLS token: 28 px / patch 14 = 4 patch tokens (+1 CLS, dropped by the "default"
    # feature strategy; the processor needs num_additional_image_tokens=1 to count it).
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
              "projection_dim": 32}
    return tokenizer, ids, text, vision


@tiny_builder("llava", version=1)
def build_llava(target: Path) -> None:
    """LLaVA-1.5: CLIP vision tower (28 px, patch 14: 4 image tokens), 2-layer MLP projector, Llama text model."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer, ids, text, vision = _llava_parts()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                         image_seq_length=4, vision_feature_layer=-2, vision_feature_select_strategy="default")
    save_model(target, seeded(lambda: LlavaForConditionalGeneration(config)), processor)


@tiny_builder("llava-next", version=1)
def build_llava_next(target: Path) -> None:
    """LLaVA-NeXT (1.6): LLaVA's parts with "anyres" tiling: the image is cut into 28 px tiles on the best grid of
    ``image_grid_pinpoints`` plus a global view, with an ``image_newline`` token per row."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer, ids, text, vision = _llava_parts()
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                              image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                   vision_feature_select_strategy="default", chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
                                   num_additional_image_tokens=1)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                             image_grid_pinpoints=pinpoints, image_seq_length=4, vision_feature_layer=-2,
                             vision_feature_select_strategy="default")
    save_model(target, seeded(lambda: LlavaNextForConditionalGeneration(config)), processor)


# HuggingFaceTB/SmolVLM-Instruct's template.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SMOLVLM_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                          "<end_of_utterance>", "<global-img>",
                          *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)))


@tiny_builder("smolvlm", version=1)
def build_smolvlm(target: Path) -> None:
    """SmolVLM (the Idefics3 architecture): SigLIP-style tower on 32 px tiles (patch 8, pixel shuffle x2: 4 tokens
    per tile), images over 32 px split into a grid of tiles plus a global view, Llama text model."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tokenizer = byte_level_tokenizer(SMOLVLM_SPECIAL_TOKENS, pad="<|endoftext|>", eos="<end_of_utterance>",
                                     bos="<|im_start|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SMOLVLM_SPECIAL_TOKENS}
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=SMOLVLM_CHAT_TEMPLATE)
    text = {"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 4096, "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<end_of_utterance>"], "pad_token_id": ids["<|endoftext|>"]}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    config = Idefics3Config(vision_config=vision, text_config=text, image_token_id=ids["<image>"], scale_factor=2,
                            pad_token_id=ids["<|endoftext|>"])
    save_model(target, seeded(lambda: Idefics3ForConditionalGeneration(config)), processor)
