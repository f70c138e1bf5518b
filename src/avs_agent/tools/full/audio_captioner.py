"""Free-text audio descriptions from an audio-language model that transformers supports natively:
Qwen2-Audio (``Qwen2AudioForConditionalGeneration`` + ``Qwen2AudioProcessor``, e.g.
``Qwen/Qwen2-Audio-7B-Instruct``), behind the ``AudioCaptioner`` protocol.

Each audio segment is described once per prompt (several prompts by default, so the agent can check
the descriptions against each other); all (segment, prompt) pairs go through the model as one padded
batch (``batch_size`` at a time). Prompts go through the processor's chat template; greedy decoding.
Noun phrases of the captions come from the same spaCy extractor as image captions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from avs_agent.tools.full import hf
from avs_agent.tools.full.blip_captioner import DEFAULT_SPACY_MODEL, NounPhraseExtractor
from avs_agent.tools.types import SAMPLE_RATE, AudioSegment, Captions

DEFAULT_PROMPTS = (
    "Describe the sound in one sentence.",
    "What is making this sound? Answer with the sound sources only.",
    "Which objects or animals can be heard? List them.",
)


class Qwen2AudioCaptioner:
    """Qwen2-Audio through transformers.

    Args:
        model: where the checkpoint is.
        prompts: default captioning prompts (used when ``caption`` gets none).
        options: ``device``, ``dtype`` ('bfloat16' halves the 7B model's memory), ``max_new_tokens``
            (40), ``batch_size`` (4), ``max_seconds`` (30: Whisper's window; longer audio is cut),
            ``spacy_model``.
    """

    name = "qwen2_audio"

    def __init__(
        self,
        model: hf.Location,
        prompts: list[str] | tuple[str, ...] | None = None,
        options: dict[str, Any] | None = None,
    ):
        self.loc = model
        self.options = dict(options or {})
        self.prompts = list(prompts or self.options.get("prompts") or DEFAULT_PROMPTS)
        self.nouns = NounPhraseExtractor(str(self.options.get("spacy_model", DEFAULT_SPACY_MODEL)))

    @property
    def device(self) -> str:
        return hf.pick_device(self.options)

    def _load(self) -> tuple[Any, Any]:
        def load() -> tuple[Any, Any]:
            from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

            processor = hf.load_pretrained(AutoProcessor, self.loc, "Qwen2-Audio processor")
            processor.tokenizer.padding_side = "left"
            model = hf.load_pretrained(
                Qwen2AudioForConditionalGeneration,
                self.loc,
                "Qwen2-Audio",
                dtype=hf.pick_dtype(self.options, self.device),
            )
            return model.to(self.device).eval(), processor

        return hf.cached(("qwen2_audio", self.loc.where, self.device, str(self.options.get("dtype"))), load)

    def warm_up(self) -> None:
        self.caption([AudioSegment.silence()])

    def caption(self, audio: list[AudioSegment], prompts: list[str] | None = None) -> list[Captions]:
        """One ``Captions`` per segment: ``texts[j]`` answers ``prompts[j]``."""
        prompts = list(prompts or self.prompts)
        if not audio:
            return []
        pairs = [(i, p) for i in range(len(audio)) for p in prompts]
        texts: list[str] = []
        bs = int(self.options.get("batch_size", 4))
        for start in range(0, len(pairs), bs):
            chunk = pairs[start : start + bs]
            inputs = self._preprocess([audio[i] for i, _ in chunk], [p for _, p in chunk])
            texts += self._forward(inputs)
        result = []
        for i in range(len(audio)):
            answers = texts[i * len(prompts) : (i + 1) * len(prompts)]
            result.append(Captions(texts=answers, noun_phrases=self.nouns.merged(answers), prompts=prompts))
        return result

    def _preprocess(self, segments: list[AudioSegment], prompts: list[str]) -> dict[str, Any]:
        _, processor = self._load()
        max_n = int(float(self.options.get("max_seconds", 30)) * SAMPLE_RATE)
        waves = [
            s.waveform[:max_n] if len(s.waveform) else np.zeros(SAMPLE_RATE // 10, np.float32)
            for s in segments
        ]
        texts = [
            processor.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "audio", "audio_url": "segment.wav"},
                            {"type": "text", "text": p},
                        ],
                    }
                ],
                add_generation_prompt=True,
                tokenize=False,
            )
            for p in prompts
        ]
        return dict(
            processor(text=texts, audio=waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        )

    def _forward(self, inputs: dict[str, Any]) -> list[str]:
        import torch

        model, processor = self._load()
        with torch.inference_mode():
            moved = {k: v.to(self.device) for k, v in inputs.items()}
            if "input_features" in moved:
                moved["input_features"] = moved["input_features"].to(model.dtype)
            ids = model.generate(
                **moved, max_new_tokens=int(self.options.get("max_new_tokens", 40)), do_sample=False
            )
        new = ids[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
