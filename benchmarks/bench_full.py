"""Full-profile cost at the real architecture sizes, with random weights (no hub here).

Each model is built from its default (real-size) config, saved with save_pretrained and loaded back
through the tools' own code, all in one process. Measures per tool: load time, first and warm call
latency; peak RAM of the process (ru_maxrss) after each tool; and the saving from reusing the image
embedding: a fresh frame (GroundingDINO + SAM image encoder + mask decoder) against a retry on the
same frame with another phrase (cached SAM embedding and GroundingDINO backbone features) and a
retry with a lower threshold (cached detection), as ratios measured in this run.

    python benchmarks/bench_full.py [--out benchmarks/results/full_cpu.json] [--device cpu|cuda]
        [--with-audio-captioner]   # Qwen2-Audio-7B in bfloat16 (about 16 GB; GPU territory)
        [--sam2]                   # SAM2.1-hiera-tiny sizes instead of SAM ViT-B
        [--batch 4]                # a server batch of fresh frames: one by one vs prefetched together
        [--only-grounder]          # Grounded-SAM only (writes --out with just that)

Not a test: numbers depend on the machine. Targets: the whole profile in <= 6 GB RAM on CPU; a retry
on a frame whose embedding is cached <= 1/3 of a fresh frame.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import tiny_models as tm  # noqa: E402  (offline tokenizers)

from avs_agent.tools.errors import ModelNotFoundError  # noqa: E402
from avs_agent.tools.locate import Location, locate  # noqa: E402
from avs_agent.tools.types import AudioSegment, Frame  # noqa: E402


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def peak_gpu_gb(reset: bool = False) -> float:
    """Peak GPU memory allocated (GB) since the last reset; ``reset`` starts a new window after reading."""
    import torch

    peak = torch.cuda.max_memory_allocated() / 1024**3
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return peak


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    out = None
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# --- real-size random checkpoints ------------------------------------------------------------------


def save_grounding_dino(d: Path) -> Path:
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    tok = BertTokenizer(vocab_file=str(tm._bert_vocab(d / "_tok")))
    GroundingDinoForObjectDetection(GroundingDinoConfig()).save_pretrained(d)  # Swin-T, 900 queries
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(), tokenizer=tok).save_pretrained(d)
    return d


def save_sam(d: Path) -> Path:
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    SamModel(SamConfig()).save_pretrained(d)  # ViT-B, 1024 px
    SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(d)
    return d


def save_sam2(d: Path) -> Path:
    from transformers import Sam2Config, Sam2Model

    Sam2Model(Sam2Config()).save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 1024, "width": 1024}}))
    return d


def save_clap(d: Path) -> Path:
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    vocab, merges = tm._byte_bpe(d / "_tok", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    ClapModel(ClapConfig()).save_pretrained(d)  # HTSAT-unfused + RoBERTa
    ClapProcessor(
        feature_extractor=ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad"),
        tokenizer=RobertaTokenizer(vocab=str(vocab), merges=str(merges)),
    ).save_pretrained(d)
    return d


def save_blip(d: Path) -> Path:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tok = BertTokenizer(vocab_file=str(tm._bert_vocab(d / "_tok")))
    BlipForConditionalGeneration(BlipConfig()).save_pretrained(d)  # base, 384 px
    BlipProcessor(image_processor=BlipImageProcessorPil(), tokenizer=tok).save_pretrained(d)
    return d


def save_ast(d: Path) -> Path:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    config = ASTConfig(num_labels=527)  # AudioSet: 1024 frames, 128 mel
    ASTForAudioClassification(config).save_pretrained(d)
    ASTFeatureExtractor().save_pretrained(d)
    return d


def save_clip(d: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab, merges = tm._clip_bpe(d / "_tok")
    CLIPModel(CLIPConfig(vision_config={"patch_size": 32})).save_pretrained(d)  # ViT-B/32
    CLIPProcessor(
        image_processor=CLIPImageProcessorPil(), tokenizer=CLIPTokenizer(vocab=str(vocab), merges=str(merges))
    ).save_pretrained(d)
    return d


def save_qwen2_audio(d: Path) -> Path:
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Tokenizer,
        WhisperFeatureExtractor,
    )

    vocab, merges = tm._byte_bpe(d / "_tok", tm.QWEN_SPECIALS)
    tok = Qwen2Tokenizer(
        vocab=str(vocab),
        merges=str(merges),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=tm.QWEN_SPECIALS[1:],
    )
    config = Qwen2AudioConfig(
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>")
    )  # 7B text + Whisper-large encoder
    torch.set_default_dtype(torch.bfloat16)
    try:
        Qwen2AudioForConditionalGeneration(config).save_pretrained(d)
    finally:
        torch.set_default_dtype(torch.float32)
    Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok
    ).save_pretrained(d)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "full_cpu.json")
    ap.add_argument("--device", default=None)
    ap.add_argument("--with-audio-captioner", action="store_true")
    ap.add_argument("--sam2", action="store_true")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="frames in the server-batch measurement (1: skip)")
    ap.add_argument("--only-grounder", action="store_true", help="measure Grounded-SAM only")
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = {"device": device}
    results: dict = {
        "device": device,
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "weights": "random (real architecture sizes)",
        "tools": {},
    }
    rng = np.random.default_rng(0)
    frame = Frame(0, 0.0, rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), aspect=16 / 9)  # AVSBench-like
    clip = AudioSegment(0.0, 5.0, (rng.standard_normal(5 * 16000) * 0.1).astype(np.float32))
    seconds = [AudioSegment(i, i + 1.0, clip.waveform[i * 16000 : (i + 1) * 16000]) for i in range(5)]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def loc(path: Path) -> Location:
            return locate("bench", str(path))

        def record(name: str, load_s: float, first_s: float, warm_s: float, **extra) -> None:
            results["tools"][name] = {
                "load_s": round(load_s, 3),
                "first_call_s": round(first_s, 3),
                "warm_call_s": round(warm_s, 3),
                "peak_rss_gb_after": round(peak_gb(), 3),
                **(
                    {"peak_gpu_gb_since_previous": round(peak_gpu_gb(reset=True), 3)}
                    if device.startswith("cuda")
                    else {}
                ),
                **extra,
            }
            print(
                f"{name:18s} load {load_s:6.2f}s  first {first_s:6.2f}s  warm {warm_s:6.3f}s  peak RSS {peak_gb():.2f} GB",
                flush=True,
            )

        # Grounded-SAM and the embedding reuse
        from avs_agent.tools.full.grounded_sam import GroundedSam

        seg_dir = save_sam2(tmp / "sam2") if args.sam2 else save_sam(tmp / "sam")
        g = GroundedSam(
            loc(save_grounding_dino(tmp / "gdino")),
            loc(seg_dir),
            top_k=3,
            box_threshold=0.0,
            text_threshold=0.0,
            options=opts,
        )
        load_s, _ = timed(g.load)
        first, _ = timed(lambda: g.ground(frame, ["a dog"]))
        fresh_times, retry_phrase, retry_thr = [], [], []
        for _ in range(args.repeat):
            f = Frame(0, 0.0, rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), aspect=16 / 9)
            t, _ = timed(lambda f=f: (g.ground(f, ["a dog"]), sync(device)))
            fresh_times.append(t)
            t, _ = timed(lambda f=f: (g.ground(f, ["a guitar"]), sync(device)))
            retry_phrase.append(t)
            t, _ = timed(lambda f=f: (g.ground(f, ["a guitar"], box_threshold=0.0001), sync(device)))
            retry_thr.append(t)
        # the parts, measured alone
        from avs_agent.tools.full.grounded_sam import frame_key
        from avs_agent.tools.ops import stretch_to_aspect

        img, _ = stretch_to_aspect(frame)
        enc_s, _ = timed(lambda: (g._embed(img), sync(device)), args.repeat)
        boxes = np.asarray([[10, 10, 120, 200]], np.float32)
        dec_s, _ = timed(lambda: (g._segment(img, frame_key(img), boxes), sync(device)), args.repeat)
        fresh, rp, rt = (
            float(np.median(fresh_times)),
            float(np.median(retry_phrase)),
            float(np.median(retry_thr)),
        )
        record(
            "grounded_sam",
            load_s,
            first,
            fresh,
            segmenter="sam2.1-hiera-tiny sizes" if args.sam2 else "sam-vit-base sizes",
            fresh_frame_s=round(fresh, 3),
            retry_new_phrase_s=round(rp, 3),
            retry_lower_threshold_s=round(rt, 3),
            retry_new_phrase_ratio=round(rp / fresh, 3),
            retry_lower_threshold_ratio=round(rt / fresh, 4),
            sam_image_encoder_s=round(enc_s, 3),
            sam_mask_decoder_s=round(dec_s, 4),
            target_retry_ratio=1 / 3,
            meets_retry_target=bool(rp / fresh <= 1 / 3),
        )
        if args.batch > 1:
            # a tool server's batch of ground() calls on fresh frames: one by one vs prefetched together
            def fresh_calls() -> list[tuple]:
                return [
                    (
                        Frame(
                            i, float(i), rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), aspect=16 / 9
                        ),
                        ["a dog"],
                        None,
                    )
                    for i in range(args.batch)
                ]

            one_by_one = fresh_calls()
            seq_s, _ = timed(lambda: ([g.ground(*c) for c in one_by_one], sync(device)))
            seq_gpu = peak_gpu_gb(reset=True) if device.startswith("cuda") else None
            together = fresh_calls()
            g.options["batch_forwards"] = True  # measured on any device (off by default)
            bat_s, _ = timed(
                lambda: (g.prefetch("ground", together), [g.ground(*c) for c in together], sync(device))
            )
            results["tools"]["grounded_sam"].update(
                batch_of=args.batch,
                batch_one_by_one_s=round(seq_s, 3),
                batch_prefetched_s=round(bat_s, 3),
                batch_throughput_ratio=round(seq_s / bat_s, 3),
                **(
                    {
                        "batch_one_by_one_peak_gpu_gb": round(seq_gpu, 3),
                        "batch_prefetched_peak_gpu_gb": round(peak_gpu_gb(reset=True), 3),
                    }
                    if device.startswith("cuda")
                    else {}
                ),
            )
            print(
                f"grounded_sam batch of {args.batch}: one by one {seq_s:.2f}s, prefetched {bat_s:.2f}s",
                flush=True,
            )
        if args.only_grounder:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"written {args.out}")
            return

        from avs_agent.tools.full.clap import ClapScorer

        c = ClapScorer(loc(save_clap(tmp / "clap")), options=opts)
        load_s, _ = timed(lambda: c._load())
        first, _ = timed(lambda: c.score([clip], ["dog", "guitar", "car"]))
        warm, _ = timed(lambda: c.score(seconds + [clip], ["dog", "guitar", "car", "man"]), args.repeat)
        record("clap", load_s, first, warm, call="5 x 1 s + one 5 s clip vs 4 texts")

        from avs_agent.tools.full.ast_tagger import AstTagger

        a = AstTagger(loc(save_ast(tmp / "ast")), options=opts)
        load_s, _ = timed(lambda: a._load())
        first, _ = timed(lambda: a.tag_clip(clip))
        warm, _ = timed(lambda: a.tag_clip(clip), args.repeat)
        record("ast", load_s, first, warm, call="tag_clip of 5 s: 5 seconds + the clip (6 windows)")

        from avs_agent.tools.full.blip_captioner import BlipCaptioner

        b = BlipCaptioner(
            loc(save_blip(tmp / "blip")), options={**opts, "max_new_tokens": 20, "num_beams": 1}
        )
        b.nouns = lambda texts: [[] for _ in texts]  # random weights: no words to parse; spaCy timed below
        load_s, _ = timed(lambda: b._load())
        first, _ = timed(lambda: b.caption([frame]))
        warm, _ = timed(lambda: b.caption([frame]), args.repeat)
        record("blip", load_s, first, warm, call="one frame, 20 new tokens, greedy")

        from avs_agent.tools.full.blip_captioner import NounPhraseExtractor

        n = NounPhraseExtractor()
        try:
            load_s, _ = timed(lambda: n._nlp())
        except ModelNotFoundError as exc:  # a GPU box may lack spaCy; it runs on the CPU anyway
            results["tools"]["spacy"] = {"skipped": str(exc)}
        else:
            warm, _ = timed(
                lambda: n(["a man playing an acoustic guitar on a stage next to a dog"] * 5), args.repeat
            )
            record("spacy", load_s, warm, warm, call="noun phrases of 5 captions")

        from avs_agent.tools.full.clip_check import ClipCropChecker

        k = ClipCropChecker(loc(save_clip(tmp / "clip")), options=opts)
        masks = np.zeros((3, 224, 224), bool)
        masks[:, 40:160, 60:120] = True
        load_s, _ = timed(lambda: k._load())
        first, _ = timed(lambda: k.check(frame, masks, ["dog", "guitar"]))
        warm, _ = timed(lambda: k.check(frame, masks, ["dog", "guitar"]), args.repeat)
        record("clip_check", load_s, first, warm, call="3 masks x 2 texts")

        results["peak_rss_gb_without_audio_captioner"] = round(peak_gb(), 3)
        results["target_peak_rss_gb"] = 6.0
        results["meets_ram_target_without_audio_captioner"] = bool(peak_gb() <= 6.0)

        if args.with_audio_captioner:
            from avs_agent.tools.full.audio_captioner import Qwen2AudioCaptioner

            q = Qwen2AudioCaptioner(
                loc(save_qwen2_audio(tmp / "qwen2_audio")),
                options={**opts, "dtype": "bfloat16", "max_new_tokens": 10},
            )
            import types

            q.nouns = types.SimpleNamespace(merged=lambda texts: [])
            load_s, _ = timed(lambda: q._load())
            first, _ = timed(lambda: q.caption([clip], prompts=["Describe the sound."]))
            record("qwen2_audio", load_s, first, first, call="5 s clip, 1 prompt, 10 new tokens, bf16")
            results["peak_rss_gb_with_audio_captioner"] = round(peak_gb(), 3)
        else:
            results["tools"]["qwen2_audio"] = {
                "skipped": "7B model: about 16 GB in bfloat16; run with --with-audio-captioner (GPU)"
            }

    if device.startswith("cuda"):
        results["peak_gpu_gb"] = round(
            max(
                [peak_gpu_gb()]
                + [float(v) for t in results["tools"].values() for k, v in t.items() if "peak_gpu_gb" in k]
            ),
            3,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "tools"}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
