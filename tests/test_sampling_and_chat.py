import numpy as np
import pytest

from workbench.chat import ChatTemplateError, render_chat
from workbench.sampler import Sampler, SamplerSettings


def test_greedy_is_argmax():
    z = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    assert Sampler(SamplerSettings(temperature=0))(z) == 1


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    z = np.log(np.array([0.5, 0.3, 0.2], np.float64)).astype(np.float32)
    draw = lambda seed: [Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)(z) for _ in range(1)]
    assert draw(3) == draw(3)
    s = Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0)
    counts = np.bincount([s(z) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.03)


def test_top_k_top_p_min_p_restrict_the_support():
    z = np.log(np.array([0.4, 0.3, 0.2, 0.1])).astype(np.float32)
    assert {Sampler(temperature=1, top_k=2, top_p=1, min_p=0, seed=i)(z) for i in range(200)} == {0, 1}
    assert {Sampler(temperature=1, top_k=0, top_p=0.65, min_p=0, seed=i)(z) for i in range(200)} == {0, 1}
    assert {Sampler(temperature=1, top_k=0, top_p=1, min_p=0.6, seed=i)(z) for i in range(200)} == {0, 1}


def test_repetition_penalty_demotes_seen_tokens():
    z = np.array([2.0, 1.9, 0.0], np.float32)
    assert Sampler(temperature=0, repeat_penalty=1.2)(z, history=[0]) == 1


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(min_p=1), dict(top_k=-1)])
def test_bad_settings(bad):
    with pytest.raises(ValueError):
        SamplerSettings(**bad)


def test_chat_template_renders():
    t = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    assert render_chat(t, [{"role": "user", "content": "hi"}]) == "<|user|>hi\n<|assistant|>"


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self.__init__.__globals__['os'].system('id') }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{% set x = messages.append({'role': 'x'}) %}",
])
def test_hostile_templates_are_refused(evil):
    with pytest.raises(ChatTemplateError):
        render_chat(evil, [{"role": "user", "content": "hi"}])


def test_template_raise_exception():
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", [])
