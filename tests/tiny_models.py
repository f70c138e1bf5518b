"""Builders of tiny randomly initialised checkpoints for the full-profile tools.

Each ``build_*`` makes a model from a small config, saves it with ``save_pretrained`` (model and
processor) into a folder and returns that folder, so tests load it through the very same
``from_pretrained(path)`` code as a real checkpoint. Tokenizers are built offline: a WordPiece
``BertTokenizer`` from a word list (GroundingDINO's text side, BLIP) and byte-level BPE vocabularies
trained with ``tokenizers`` (CLAP's RoBERTa tokenizer, CLIP, Qwen2-Audio).

Reusable by any test: ``build_all(tmp_dir)`` returns ``{config key: folder}`` for every full-profile
model. Building everything takes a few seconds on 2 CPU cores. Imports of torch/transformers are
inside the builders.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

WORDS = (
    "a an the of and with in on is are at to his her its there some two man woman person people boy girl "
    "child dog cat bird horse cow car truck bus train motorcycle helicopter airplane boat guitar piano "
    "violin drum drums trumpet saxophone flute cello accordion ukulele harp bell clock phone baby lion "
    "keyboard tabla sound playing sitting standing street room stage picture image photo of close up "
    "black white red blue small big electric acoustic lawn mower engine siren water"
).split()

CORPUS = [
    "a man playing an acoustic guitar on a stage",
    "the sound of a dog barking in the street",
    "a woman playing the piano in a room",
    "a car engine and a siren, a helicopter flying",
    "a baby crying, a cat and a bird singing",
    "a person playing the violin, drums and a trumpet",
    "the sound of a lawn mower, water and a bell",
    "Describe the sound. What is making this sound? List the sound sources you hear.",
] * 4


def _bert_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "'", "##s", "##ing"]
    vocab += sorted(set(WORDS))
    path = folder / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return path


def _byte_bpe(folder: Path, specials: list[str], vocab_size: int = 400) -> tuple[Path, Path]:
    """vocab.json + merges.txt of a byte-level BPE trained on ``CORPUS``."""
    from tokenizers import ByteLevelBPETokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    bpe.save_model(str(folder))
    return folder / "vocab.json", folder / "merges.txt"


def _clip_bpe(folder: Path) -> tuple[Path, Path]:
    """A CLIP-style vocabulary (words with the '</w>' end marker) and an empty merge list."""
    folder.mkdir(parents=True, exist_ok=True)
    base = [chr(c) for c in range(33, 127)]
    vocab = base + [b + "</w>" for b in base] + [w + "</w>" for w in sorted(set(WORDS))]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vjson = folder / "clip_vocab.json"
    vjson.write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(vocab))}))
    merges = folder / "clip_merges.txt"
    merges.write_text("#version: 0.2\n")
    return vjson, merges


def build_grounding_dino(folder: Path) -> Path:
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    folder = Path(folder)
    tok = BertTokenizer(vocab_file=str(_bert_vocab(folder / "_tok")))
    config = GroundingDinoConfig(
        backbone_config=dict(
            model_type="swin",
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=4,
            image_size=64,
            out_indices=[2, 3, 4],
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=tok.vocab_size,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=20,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=64,
    )
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return folder


def build_sam(folder: Path) -> Path:
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    folder = Path(folder)
    config = SamConfig(
        vision_config=dict(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_dim=32,
            output_channels=16,
            image_size=64,
            patch_size=16,
            global_attn_indexes=[0],
            window_size=2,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    config.vision_config.num_pos_feats = 8
    SamModel(config).save_pretrained(folder)
    image_processor = SamImageProcessorPil(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    SamProcessor(image_processor=image_processor).save_pretrained(folder)
    return folder


def _sam2_vision(fpn_hidden_size: int, image_size: int = 64) -> dict:
    """The tiny SAM2 Hiera vision config both tiny SAM2 checkpoints (image and video) use."""
    return dict(
        backbone_config=dict(
            model_type="sam2_hiera_det_model",
            hidden_size=8,
            num_attention_heads=1,
            blocks_per_stage=[1, 2, 1, 1],
            embed_dim_per_stage=[8, 16, 32, 64],
            num_attention_heads_per_stage=[1, 1, 1, 1],
            window_size_per_stage=[2, 2, 2, 2],
            global_attention_blocks=[2],
            image_size=[image_size, image_size],
            window_positional_embedding_background_size=[2, 2],
        ),
        backbone_channel_list=[64, 32, 16, 8],
        fpn_hidden_size=fpn_hidden_size,
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
    )


def build_sam2(folder: Path) -> Path:
    """A tiny SAM2 with a ``preprocessor_config.json`` (transformers' Sam2 image processor needs
    torchvision, so the grounder preprocesses SAM2 input itself from these values)."""
    from transformers import Sam2Config, Sam2Model

    folder = Path(folder)
    config = Sam2Config(
        vision_config=_sam2_vision(fpn_hidden_size=32),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )
    Sam2Model(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Sam2ImageProcessorFast",
                "size": {"height": 64, "width": 64},
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
                "rescale_factor": 1 / 255,
            }
        )
    )
    return folder


def build_clap(folder: Path) -> Path:
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    folder = Path(folder)
    vocab, merges = _byte_bpe(folder / "_tok", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = RobertaTokenizer(vocab=str(vocab), merges=str(merges))
    config = ClapConfig(
        text_config=dict(
            vocab_size=tok.vocab_size + 8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=80,
            projection_dim=16,
        ),
        audio_config=dict(
            spec_size=128,
            patch_size=4,
            patch_stride=(4, 4),
            patch_embeds_hidden_size=8,
            hidden_size=16,
            depths=[1, 1],
            num_attention_heads=[1, 1],
            window_size=4,
            num_mel_bins=64,
            projection_dim=16,
            enable_fusion=False,
        ),
        projection_dim=16,
    )
    ClapModel(config).save_pretrained(folder)
    feature_extractor = ClapFeatureExtractor(
        feature_size=64,
        sampling_rate=48_000,
        hop_length=480,
        max_length_s=1,
        fft_window_size=1024,
        truncation="rand_trunc",
        padding="repeatpad",
    )
    ClapProcessor(feature_extractor=feature_extractor, tokenizer=tok).save_pretrained(folder)
    return folder


def build_blip(folder: Path) -> Path:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    folder = Path(folder)
    tok = BertTokenizer(vocab_file=str(_bert_vocab(folder / "_tok")))
    tok.bos_token = "[CLS]"
    config = BlipConfig(
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            vocab_size=tok.vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            encoder_hidden_size=16,
            max_position_embeddings=64,
            bos_token_id=tok.cls_token_id,
            sep_token_id=tok.sep_token_id,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.sep_token_id,
        ),
        projection_dim=16,
    )
    BlipForConditionalGeneration(config).save_pretrained(folder)
    image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return folder


def build_ast(folder: Path, num_labels: int = 527, dominant: str | None = "Dog") -> Path:
    """AST with AudioSet-sized output (527 labels named 'label_i' except a few real names); the
    ``dominant`` label gets a large bias so it tops every clip's tags."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    folder = Path(folder)
    names = ["Speech", "Dog", "Guitar", "Piano", "Car", "Music", "Animal", "Vehicle"]
    id2label = {i: (names[i] if i < len(names) else f"label_{i}") for i in range(num_labels)}
    config = ASTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=16,
        frequency_stride=10,
        time_stride=10,
        max_length=100,
        num_mel_bins=128,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = ASTForAudioClassification(config)
    if dominant is not None:  # make one label win, so the agent has something to look for
        import torch

        with torch.no_grad():
            model.classifier.dense.bias[names.index(dominant)] = 8.0
    model.save_pretrained(folder)
    ASTFeatureExtractor(max_length=100, num_mel_bins=128).save_pretrained(folder)
    return folder


def build_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = Path(folder)
    vocab, merges = _clip_bpe(folder / "_tok")
    tok = CLIPTokenizer(vocab=str(vocab), merges=str(merges))
    config = CLIPConfig(
        text_config=dict(
            vocab_size=tok.vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return folder


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


def build_qwen2_audio(folder: Path) -> Path:
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Tokenizer,
        WhisperFeatureExtractor,
    )

    folder = Path(folder)
    vocab, merges = _byte_bpe(folder / "_tok", QWEN_SPECIALS)
    tok = Qwen2Tokenizer(
        vocab=str(vocab),
        merges=str(merges),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=QWEN_SPECIALS[1:],
    )
    audio_id = tok.convert_tokens_to_ids("<|AUDIO|>")
    config = Qwen2AudioConfig(
        audio_config=dict(
            d_model=16,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=32,
            num_mel_bins=128,
            max_source_positions=1500,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=2048,
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.pad_token_id,
        ),
        audio_token_index=audio_id,
    )
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    feature_extractor = WhisperFeatureExtractor(feature_size=128)
    Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tok).save_pretrained(folder)
    return folder


SAM2_VIDEO_SIZE = 64
"""The tiny SAM2 video model's square input, pixels."""


def build_sam2_video(folder: Path) -> Path:
    """A random ~1M-parameter ``Sam2VideoModel`` (64 px input) plus its processor's config files.

    Constraints of transformers' implementation: the memory attention's image cross-attention has
    ``kv_in_dim`` fixed at 64, so ``memory_encoder_output_channels`` (mem_dim) must be 64, and object
    pointers are only split correctly when mem_dim < the hidden size, hence hidden size 128.
    """
    from transformers import Sam2VideoConfig, Sam2VideoModel

    folder = Path(folder)
    hidden = 128
    config = Sam2VideoConfig(
        vision_config={
            "model_type": "sam2_vision_model",
            **_sam2_vision(fpn_hidden_size=hidden, image_size=SAM2_VIDEO_SIZE),
        },
        prompt_encoder_config=dict(
            hidden_size=hidden, image_size=SAM2_VIDEO_SIZE, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=hidden, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16
        ),
        image_size=SAM2_VIDEO_SIZE,
        num_maskmem=3,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_num_attention_heads=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[4, 4],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )
    Sam2VideoModel(config).save_pretrained(folder)
    prep = {
        "size": {"height": SAM2_VIDEO_SIZE, "width": SAM2_VIDEO_SIZE},
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "rescale_factor": 1 / 255,
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
    }
    if (
        importlib.util.find_spec("torchvision") is not None
    ):  # pragma: no cover - the CPU install has no torchvision
        from transformers import Sam2ImageProcessor, Sam2VideoProcessor, Sam2VideoVideoProcessor

        Sam2VideoProcessor(
            image_processor=Sam2ImageProcessor(**prep), video_processor=Sam2VideoVideoProcessor(**prep)
        ).save_pretrained(folder)
    else:  # the files save_pretrained writes, by hand (the processor cannot be built without torchvision)
        (folder / "processor_config.json").write_text(
            json.dumps(
                {
                    "processor_class": "Sam2VideoProcessor",
                    "target_size": SAM2_VIDEO_SIZE,
                    "point_pad_value": -10,
                }
            )
        )
        (folder / "preprocessor_config.json").write_text(
            json.dumps({"image_processor_type": "Sam2ImageProcessor", **prep})
        )
        (folder / "video_preprocessor_config.json").write_text(
            json.dumps({"video_processor_type": "Sam2VideoVideoProcessor", **prep})
        )
    return folder


BUILDERS = {
    "tools.grounder.detector": build_grounding_dino,
    "tools.grounder.segmenter": build_sam,
    "sam2": build_sam2,
    "tools.audio_tagger.model": build_ast,
    "tools.audio_text_scorer.model": build_clap,
    "tools.image_captioner.model": build_blip,
    "tools.audio_captioner.model": build_qwen2_audio,
    "tools.clip_check.model": build_clip,
    "tools.propagator.model": build_sam2_video,
}


def build_all(root: Path, include_sam2: bool = False) -> dict[str, Path]:
    """Every full-profile model as a tiny checkpoint under ``root``: ``{config key: folder}``."""
    import torch

    root = Path(root)
    out = {}
    for n, (key, builder) in enumerate(BUILDERS.items()):
        if key == "sam2" and not include_sam2:
            continue
        torch.manual_seed(n)  # the same random weights on every run: tests over them do not flake
        out[key] = builder(root / key.replace(".", "_"))
    return out


def set_overrides(paths: dict[str, Path]) -> list[str]:
    """``--set`` pairs pointing each model of the full profile at the tiny folders of ``build_all``."""
    pairs = []
    for key, folder in paths.items():
        if key == "sam2":
            continue
        pairs.append(f"{key}.source={folder}")
        pairs.append(f"{key}.revision=null")
    return pairs


# --- original packages (segment-anything; a stand-in for groundingdino-py) -------------------------

TINY_SAM_TYPE = "vit_tiny"


def register_tiny_sam_original() -> None:
    """Add a tiny ViT (``vit_tiny``) to segment-anything's ``sam_model_registry`` (1024 px input as
    the real ones, 1 block of width 32)."""
    from functools import partial

    from avs_agent.tools.full.grounded_sam_original import import_segment_anything

    build_sam = import_segment_anything()
    build_sam.sam_model_registry[TINY_SAM_TYPE] = partial(
        build_sam._build_sam,
        encoder_embed_dim=32,
        encoder_depth=1,
        encoder_num_heads=1,
        encoder_global_attn_indexes=[0],
    )


def build_sam_original(folder: Path) -> Path:
    """A random tiny segment-anything checkpoint file ``sam_vit_tiny.pth`` in ``folder``; returns the file."""
    import torch

    from avs_agent.tools.full.grounded_sam_original import import_segment_anything

    register_tiny_sam_original()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sam = import_segment_anything().sam_model_registry[TINY_SAM_TYPE](checkpoint=None)
    path = folder / "sam_vit_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


def install_fake_groundingdino(tokenizer_folder: Path, num_queries: int = 12):
    """Put a stand-in ``groundingdino`` package into ``sys.modules`` (groundingdino-py itself cannot be
    installed beside transformers 5): ``models.build_model``, ``util.slconfig.SLConfig`` and
    ``util.utils.clean_state_dict`` with the real signatures; the model returns random
    ``pred_logits`` (1, Q, 256) and ``pred_boxes`` (1, Q, 4) and carries a real BERT tokenizer.
    Returns a function that removes the stand-in again."""
    import sys
    import types

    import torch
    from transformers import BertTokenizer

    class FakeDino(torch.nn.Module):
        max_text_len = 256

        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3, 256)
            self.box = torch.nn.Linear(3, 4)
            self.tokenizer = BertTokenizer(vocab_file=str(_bert_vocab(Path(tokenizer_folder))))

        def forward(self, samples, captions):
            g = torch.Generator().manual_seed(len(captions[0]))
            feats = samples.mean(dim=(2, 3))[:, None, :] + torch.randn(1, num_queries, 3, generator=g)
            return {
                "pred_logits": self.proj(feats) * 5,
                "pred_boxes": torch.sigmoid(self.box(feats)) * 0.5 + 0.25,
            }

    root = types.ModuleType("groundingdino")
    models = types.ModuleType("groundingdino.models")
    util = types.ModuleType("groundingdino.util")
    slconfig = types.ModuleType("groundingdino.util.slconfig")
    utils = types.ModuleType("groundingdino.util.utils")
    models.build_model = lambda args: FakeDino()
    slconfig.SLConfig = type(
        "SLConfig", (), {"fromfile": staticmethod(lambda path: types.SimpleNamespace(path=path))}
    )
    utils.clean_state_dict = lambda state: state
    mods = {
        "groundingdino": root,
        "groundingdino.models": models,
        "groundingdino.util": util,
        "groundingdino.util.slconfig": slconfig,
        "groundingdino.util.utils": utils,
    }
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)

    def uninstall() -> None:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v

    return uninstall, FakeDino


def build_fake_groundingdino_folder(folder: Path) -> Path:
    """A folder shaped like the real detector's (``*.cfg.py`` + ``*.pth``) for the stand-in model."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "GroundingDINO_SwinT_OGC.cfg.py").write_text("batch_size = 1\nmodelname = 'groundingdino'\n")
    uninstall, FakeDino = install_fake_groundingdino(folder / "_tok")
    try:
        torch.save({"model": FakeDino().state_dict()}, folder / "groundingdino_swint_ogc.pth")
    finally:
        uninstall()
    return folder
