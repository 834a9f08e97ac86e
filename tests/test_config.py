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


# --- type and range checks of every scalar field (issue 11, item 6) --------------------------

_POSITIVE = [
    "connect_timeout",
    "ready_timeout",
    "drain_timeout",
    "reconnect_backoff_s",
    "reconnect_backoff_max_s",
    "reconnect_budget_s",
    "replay_buffer_s",
    "max_pending_input_s",
    "renew_margin_s",
]
_OPT_POSITIVE = ["heartbeat_interval", "idle_timeout", "realtime_factor", "max_session_s"]
_NUMBER_BAD = [float("inf"), float("-inf"), float("nan"), True, False, "5", b"5", [1.0], -1.0, 0]
_STRINGS = ["model_name", "input_format", "output_format", "url", "auth_mode"]
_OPT_STRINGS = ["voice_id", "source_language", "stt_model_name", "tts_model_name", "client_req_id"]
_BOOLS = ["allow_insecure", "close_ws_on_eos", "reconnect"]


def _bad(field, value, allowed):
    with pytest.raises(ConfigurationError) as info:
        S2SConfig(**{"target_language": "fr", "url": LOCAL, field: value})
    assert f"{field}=" in str(info.value)
    assert allowed in str(info.value), str(info.value)


@pytest.mark.parametrize("value", _NUMBER_BAD, ids=repr)
@pytest.mark.parametrize("field", _POSITIVE + _OPT_POSITIVE)
def test_positive_numbers_reject_inf_nan_bools_and_wrong_types(field, value):
    _bad(field, value, "a finite number > 0")


@pytest.mark.parametrize("field", _POSITIVE)
def test_required_numbers_reject_none(field):
    _bad(field, None, "a finite number > 0")


@pytest.mark.parametrize("field", _OPT_POSITIVE)
def test_optional_numbers_accept_none_and_say_so(field):
    S2SConfig(target_language="fr", url=LOCAL, renew_margin_s=30.0, **{field: None})
    _bad(field, float("inf"), "or None")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), True, "1", None, -0.5, 31])
def test_trailing_silence_range(value):
    _bad("trailing_silence_s", value, "<= 30")


@pytest.mark.parametrize("value", [True, 2.0, "3", None, float("inf"), -1])
@pytest.mark.parametrize(("field", "low"), [("max_reconnect_attempts", 0), ("output_queue_size", 1)])
def test_integers_reject_bools_floats_and_strings(field, low, value):
    _bad(field, value, f"an integer >= {low}")


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
@pytest.mark.parametrize("field", _BOOLS)
def test_bools_reject_everything_but_bool(field, value):
    _bad(field, value, "True or False")


@pytest.mark.parametrize("value", [5, b"pcm", True, None])
@pytest.mark.parametrize("field", _STRINGS)
def test_strings_reject_other_types(field, value):
    _bad(field, value, "must be a string")


def test_string_type_errors_list_allowed_values():
    _bad("auth_mode", 1, "header, token, api-key-header")
    _bad("input_format", 24000, "pcm")
    _bad("source_language", 7, "en, fr, de, es, pt")


@pytest.mark.parametrize("value", [5, b"x", True])
@pytest.mark.parametrize("field", _OPT_STRINGS)
def test_optional_strings_reject_other_types(field, value):
    _bad(field, value, "a string or None")


def test_api_key_of_wrong_type_is_not_echoed():
    secret = b"gd_fake-bytes-key-0123456789"
    with pytest.raises(ConfigurationError) as info:
        S2SConfig(target_language="fr", url=LOCAL, api_key=secret)
    assert "api_key" in str(info.value) and "0123456789" not in str(info.value)


def test_ints_are_accepted_where_floats_are_expected():
    cfg = S2SConfig(
        target_language="fr", url=LOCAL, connect_timeout=3, trailing_silence_s=0, max_session_s=None
    )
    assert cfg.connect_timeout == 3 and cfg.trailing_silence_s == 0
