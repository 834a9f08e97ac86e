import pytest

from gradium_plugins import ConfigurationError, S2SConfig
from gradium_plugins.voices import DEFAULT_VOICES

LOCAL = "ws://127.0.0.1:9/api/speech/s2s"
SECRET = "gd_fake-not-a-real-key-0123456789"


def test_defaults_pick_flagship_voice_and_pcm():
    cfg = S2SConfig(target_language="fr", url=LOCAL)
    assert cfg.voice_id == DEFAULT_VOICES["fr"][0]
    assert cfg.input_format == "pcm" and cfg.output_format == "pcm"
    assert cfg.model_name == "default"
    assert cfg.setup_json_config() == {"target_language": "fr"}


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"target_language": "it"}, "target_language", "en, fr, de, es, pt"),
        ({"target_language": "fr", "source_language": "xx"}, "source_language", "en, fr"),
        ({"target_language": "fr", "input_format": "mp3"}, "input_format", "pcm_16000"),
        ({"target_language": "fr", "output_format": "opus"}, "output_format", "ulaw_8000"),
        ({"target_language": "fr", "voice_id": "YTpq7expH9539ERJ"}, "voice_id", "b35yykvVppLXyw_l"),
        ({"target_language": "fr", "connect_timeout": 0}, "connect_timeout", "> 0"),
        ({"target_language": "fr", "auth_mode": "basic"}, "auth_mode", "token"),
        ({}, "target_language", "en, fr"),
    ],
)
def test_invalid_values_name_field_and_allowed_values(kwargs, field, allowed):
    with pytest.raises(ConfigurationError) as info:
        S2SConfig(url=LOCAL, **kwargs)
    assert field in str(info.value)
    assert allowed in str(info.value)


def test_missing_key_for_cloud(monkeypatch):
    monkeypatch.delenv("GRADIUM_API_KEY", raising=False)
    monkeypatch.delenv("GRADIUM_S2S_URL", raising=False)
    with pytest.raises(ConfigurationError, match="api_key is required"):
        S2SConfig(target_language="en")


def test_key_from_env_and_never_in_repr_or_errors(monkeypatch):
    monkeypatch.setenv("GRADIUM_API_KEY", SECRET)
    cfg = S2SConfig(target_language="es")
    assert cfg.api_key == SECRET
    assert SECRET not in repr(cfg)
    assert SECRET not in str(cfg)
    with pytest.raises(ConfigurationError) as info:
        cfg.replace(target_language="zz")
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_insecure_remote_ws_needs_opt_in():
    with pytest.raises(ConfigurationError, match="allow_insecure"):
        S2SConfig(target_language="en", url="ws://example.com/s2s", api_key="k")
    cfg = S2SConfig(target_language="en", url="ws://example.com/s2s", api_key="k", allow_insecure=True)
    assert cfg.http_base == "http://example.com/s2s"


def test_url_from_env_and_http_base(monkeypatch):
    monkeypatch.setenv("GRADIUM_S2S_URL", "ws://localhost:8765/api/speech/s2s")
    cfg = S2SConfig(target_language="de")
    assert cfg.is_local and cfg.http_base == "http://localhost:8765/api"


def test_replace_language_resets_voice():
    cfg = S2SConfig(target_language="fr", url=LOCAL)
    es = cfg.replace(target_language="es")
    assert es.voice_id == DEFAULT_VOICES["es"][0]


def test_revoicing_requires_voice():
    cfg = S2SConfig(voice_id="custom-voice-uid", url=LOCAL)
    assert "target_language" not in cfg.setup_json_config()


def test_unknown_custom_voice_is_accepted():
    cfg = S2SConfig(target_language="fr", voice_id="my-cloned-voice", url=LOCAL)
    assert cfg.voice_id == "my-cloned-voice"
