"""Templates: the sandbox, payload text as data, missing values, filters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clawdbot_webhooks.builtin.local_gateway import read_log
from clawdbot_webhooks.config import ConfigError, build_settings
from clawdbot_webhooks.config.build import _literal
from clawdbot_webhooks.plugins import load_plugins
from clawdbot_webhooks.templates import make_environment


def handler(template: str, **extra: object) -> dict[str, object]:
    return {
        "id": "h",
        "action": "send_message",
        "target": {"channel": "c", "peer": "p"},
        "template": template,
        "verify": {"type": "none"},
        **extra,
    }


async def sent_text(start_server, payload: object, template: str, **webhooks: object) -> str:
    srv = await start_server({"handlers": [handler(template)], **webhooks})
    status, _ = await srv.post("h", payload)
    assert status == 202
    await srv.idle()
    [message] = read_log(srv.runtime.settings.state_dir)
    return str(message["text"])


async def test_payload_text_that_looks_like_a_template_stays_literal(start_server) -> None:
    payload = {
        "title": "{{ 7 * 7 }} {% for x in range(3) %}{{x}}{% endfor %}",
        "nested": {"evil": "{{ ''.__class__.__mro__ }}"},
    }
    text = await sent_text(start_server, payload, "{{ title }} | {{ event.nested.evil }}")
    assert (
        text == "{{ 7 * 7 }} {% for x in range(3) %}{{x}}{% endfor %} | {{ ''.__class__.__mro__ }}"
    )


async def test_missing_values_render_empty_by_default(start_server) -> None:
    text = await sent_text(start_server, {"event": 1}, "[{{ event.repository.name }}][{{ nope }}]")
    assert text == "[][]"


async def test_jinja_globals_render_and_payload_keys_shadow_them(start_server) -> None:
    template = "{% for i in range(n) %}{{ i }}{% endfor %} {{ lipsum }}"
    text = await sent_text(start_server, {"n": 3, "lipsum": "mine"}, template)
    assert text == "012 mine"


async def test_strict_templates_turn_missing_values_into_a_dead_letter(start_server) -> None:
    srv = await start_server({"handlers": [handler("{{ alert.name }}")], "strictTemplates": True})
    _, body = await srv.post("h", {"other": 1})
    await srv.idle()
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead" and record.attempts == 1
    assert "'alert' is undefined" in (record.last_error or "")


async def test_top_level_keys_headers_query_and_hook_are_variables(start_server) -> None:
    srv = await start_server(
        {
            "handlers": [
                handler(
                    "{{ alert.name }}/{{ headers['x-tag'] }}/{{ query.q }}/"
                    "{{ hook.id }}/{{ delivery.id[:4] }}"
                )
            ]
        }
    )
    async with srv.session.post(
        f"{srv.base}/webhook/h?q=42", json={"alert": {"name": "CPU"}}, headers={"X-Tag": "t1"}
    ) as resp:
        assert resp.status == 202
    await srv.idle()
    [message] = read_log(srv.runtime.settings.state_dir)
    assert message["text"] == "CPU/t1/42/h/dlv_"


async def test_builtin_filters(start_server) -> None:
    text = await sent_text(
        start_server,
        {"msg": "first line\nsecond", "data": {"k": "ü"}, "long": "word " * 40},
        "{{ msg | first_line }}|{{ data | json }}|{{ long | shorten(20) }}",
    )
    assert text == 'first line|{"k": "ü"}|word word word word…'


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ event.__class__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ event['__class__'] }}",
        "{{ lipsum.__globals__ }}",
        "{% for c in ''.__class__.mro() %}{% endfor %}",
    ],
)
def test_sandbox_escapes_in_config_are_refused(template: str) -> None:
    plugins = load_plugins()
    with pytest.raises(ConfigError) as caught:
        build_settings({"handlers": [handler(template)]}, plugins, None)
    [error] = caught.value.errors
    assert error.startswith("webhooks.handlers[0].template: template refused")


async def test_sandbox_still_guards_what_a_static_check_cannot_see(start_server) -> None:
    # The attribute name is computed at render time, so only the sandbox can refuse it.
    srv = await start_server({"handlers": [handler("{{ event | attr('__cla' ~ 'ss__') }}")]})
    _, body = await srv.post("h", {"a": 1})
    await srv.idle()
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "done"
    [message] = read_log(srv.runtime.settings.state_dir)
    assert message["text"] == ""  # the sandbox yields an undefined value, never the class


def test_syntax_errors_name_the_key_path() -> None:
    plugins = load_plugins()
    with pytest.raises(ConfigError) as caught:
        build_settings({"handlers": [handler("{{ unclosed ")]}, plugins, None)
    assert caught.value.errors[0].startswith("webhooks.handlers[0].template: template syntax")


@pytest.mark.parametrize(
    ("payload", "template", "expected"),
    [
        ("just a string", "[{{ event.title }}][{{ event.upper }}][{{ event['split'] }}]", "[][][]"),
        ([1, 2], "[{{ event.append }}][{{ event[1] }}][{{ event[5] }}]", "[][2][]"),
        ({"items": "mine"}, "[{{ event.items }}][{{ event.keys }}][{{ items }}]", "[mine][][mine]"),
        ({"n": 3}, "[{{ event.n.real }}][{{ event.n }}][{{ event|length }}]", "[][3][1]"),
    ],
)
async def test_payload_values_show_only_what_json_holds(
    start_server, payload: object, template: str, expected: str
) -> None:
    """A key lookup on a value finds a key of a mapping or an index of a list and nothing
    else: never a method of a str, list or dict (nor its heap address)."""
    assert await sent_text(start_server, payload, template) == expected


async def test_strict_templates_refuse_a_method_name_on_a_string_payload(start_server) -> None:
    srv = await start_server({"handlers": [handler("{{ event.title }}")], "strictTemplates": True})
    _, body = await srv.post("h", "just a string")
    await srv.idle()
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead"
    assert "has no attribute 'title'" in (record.last_error or "")


@given(text=st.text(alphabet=st.sampled_from("ab {}%#\n\r\t-é"), max_size=40))
def test_a_field_taken_as_literal_text_renders_as_itself(text: str) -> None:
    """Template fields without Jinja syntax are kept as strings, not rendered per delivery:
    only right where Jinja would print them unchanged."""
    if _literal(text):
        assert make_environment({}).from_string(text).render() == text


async def test_literal_and_templated_fields_reach_the_action_alike(start_server) -> None:
    config = {
        "handlers": [
            {
                "id": "h",
                "action": "send_message",
                "target": {"channel": "plain", "peer": "{{ who }}"},
                "template": "hi {{ who }}",
                "verify": {"type": "none"},
            }
        ]
    }
    srv = await start_server(config)
    spec = srv.runtime.settings.routes["h"]
    assert set(spec.templates) == {("target", "peer"), ("template",)}
    await srv.post("h", {"who": "ann"})
    await srv.idle()
    [sent] = [m for m in read_log(srv.runtime.settings.state_dir) if m["kind"] == "sent"]
    assert (sent["channel"], sent["peer"], sent["text"]) == ("plain", "ann", "hi ann")


_FORM = b"payload=%7B%22a%22%3A1%7D&x=y"


@pytest.mark.parametrize(
    ("source", "payload", "body", "content_type"),
    [
        (
            "{{ action }}: {{ pull_request.title }}",
            {"action": "opened", "pull_request": {"title": "T"}},
            b"{}",
            "application/json",
        ),
        (
            "{{ hook.id }} {{ delivery.id }} {{ headers['x-a'] }} {{ query.q }}",
            {"hook": "shadowed"},
            b"{}",
            "application/json",
        ),
        (
            "{{ event }} {{ form.x }} {{ a }}",
            {"a": 1, "event": "no"},
            _FORM,
            "application/x-www-form-urlencoded",
        ),
        (
            "{% for i in range(n) %}{{ i }}{{ loop.index }}{% endfor %}{{ lipsum }}{{ missing }}",
            {"n": 2, "lipsum": "mine", "i": "outer"},
            b"{}",
            "application/json",
        ),
        (
            "{% set t = title %}{{ t|upper }} {{ [1, 2]|join(sep) }}",
            {"title": "x", "sep": "-"},
            b"{}",
            "application/json",
        ),
    ],
)
def test_a_template_sees_in_the_context_it_reads_what_it_would_see_in_the_whole(
    source: str, payload: object, body: bytes, content_type: str
) -> None:
    """Only the names a template loads are put in its context: it renders the same."""
    from clawdbot_webhooks_hookspecs import Delivery, Handler

    from clawdbot_webhooks.templates import DataTemplate, compile_template, context_for

    template = compile_template(make_environment({}), source)
    assert isinstance(template, DataTemplate)
    assert template.reads is not None
    delivery = Delivery(
        "dlv_1", "h", 1.0, content_type, body, payload, {"x-a": "b"}, {"q": "r"}, "::1", "s"
    )
    handler = Handler("h", "/h", "send_message", {})
    whole = template.render(context_for(delivery, handler))
    assert template.render(context_for(delivery, handler, template.reads)) == whole


def test_a_filter_given_the_whole_context_gets_the_whole_context() -> None:
    """A plugin filter marked ``pass_context`` may read any variable: nothing is left out."""
    from jinja2 import pass_context

    from clawdbot_webhooks.templates import DataTemplate, compile_template, reads_of

    @pass_context
    def who(ctx: object, value: object) -> str:
        return f"{value} for {ctx['hook']['id']}"  # type: ignore[index]

    env = make_environment({"who": who})
    uses = compile_template(env, "{{ title|who }}")
    plain = compile_template(env, "{{ title|upper }}")
    assert isinstance(uses, DataTemplate) and isinstance(plain, DataTemplate)
    assert uses.reads is None
    assert plain.reads == {"title"}
    assert reads_of([plain, uses]) is None
    assert reads_of([plain]) == {"title"}


# -- a template of text and look-ups only, rendered without jinja's machinery

_NAMES = st.sampled_from(["a", "b", "self", "loop", "range", "items", "0"])
_KEYS = st.one_of(_NAMES, st.integers(-1, 2))
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.just("{{ 7 * 7 }}"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES, inner, max_size=3),
    max_leaves=8,
)


def _lookup_source(name: str, keys: list[str | int]) -> str:
    text = name
    for key in keys:
        if isinstance(key, int) or not key.isidentifier():
            text += f"[{key!r}]"
        elif len(text) % 2:  # both spellings of a key
            text += f".{key}"
        else:
            text += f"[{key!r}]"
    return "{{ " + text + " }}"


_SOURCES = st.lists(
    st.one_of(
        st.text(alphabet="ab :{}-\n", max_size=5).filter(
            lambda t: "{{" not in t and "{%" not in t and "{#" not in t and not t.endswith("{")
        ),
        st.builds(
            _lookup_source,
            st.sampled_from(["a", "b", "self", "loop", "range"]),
            st.lists(_KEYS, max_size=3),
        ),
    ),
    max_size=4,
).map("".join)


@given(
    source=_SOURCES,
    context=st.dictionaries(st.sampled_from(["a", "b", "loop"]), _JSON, max_size=3),
    strict=st.booleans(),
)
def test_text_and_look_ups_render_as_jinja_renders_them(
    source: str, context: dict[str, object], strict: bool
) -> None:
    from jinja2 import Template

    from clawdbot_webhooks.templates import compile_template

    try:
        template = compile_template(make_environment({}, strict=strict), source)
    except Exception:
        return  # not a template at all: nothing to compare
    outcomes = []
    for render in (template.render, lambda c: Template.render(template, c)):
        try:
            outcomes.append(("text", render(dict(context))))
        except Exception as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    assert outcomes[0] == outcomes[1]


def test_only_text_and_look_ups_skip_jinja() -> None:
    from clawdbot_webhooks.templates import compile_template

    env = make_environment({})
    plain = compile_template(env, "{{ action }}: {{ pull_request.title }} #{{ x['n'][0] }}")
    assert getattr(plain, "parts", None) == (
        ("action", ()),
        ": ",
        ("pull_request", ("title",)),
        " #",
        ("x", ("n", 0)),
    )
    context = {"action": "{{ 7 * 7 }}", "pull_request": {"title": "T"}, "x": {"n": [1]}}
    assert plain.render(context) == "{{ 7 * 7 }}: T #1"  # payload text is never a template
    for source in (
        "{{ a | upper }}",
        "{% if a %}x{% endif %}",
        "{{ a ~ b }}",
        "{{ self }}",
        "{{ 'x' }}",
    ):
        assert getattr(compile_template(env, source), "parts", None) is None, source
