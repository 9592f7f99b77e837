"""labkit.router: the PII detector on real-looking samples, the routing rules one by one, and real routing through
llama.cpp servers with a cloud endpoint that is down or answers garbage."""

import http.server
import threading

import pytest

from labkit import check, cost, formatting, router
from labkit.check import evaluate
from labkit.errors import LabkitError
from labkit.runtimes import free_port

# ----------------------------------------------------------------------------- personal data


@pytest.mark.parametrize("text, kind", [
    ("Please email jane.doe@example.co.uk about the refund", "email"),
    ("Card: 4111 1111 1111 1111, exp 09/28", "card"),  # Visa's published test number
    ("charge 5500-0000-0000-0004 again", "card"),
    ("amex 378282246310005 on file", "card"),
    ("IBAN GB82 WEST 1234 5698 7654 32 for the transfer", "iban"),
    ("pay DE89370400440532013000 today", "iban"),
    ("my SSN is 123-45-6789", "us_ssn"),
    ("call me on +44 20 7946 0958 tomorrow", "phone"),
    ("office: (415) 555-0132", "phone"),
    ("mobile 415.555.0132", "phone"),
])
def test_pii_detector_finds_real_looking_personal_data(text, kind):
    found = router.detect_pii(text)
    assert [m.kind for m in found] == [kind], found
    assert text[found[0].start:found[0].end] == found[0].text


@pytest.mark.parametrize("text", [
    "Card: 4111 1111 1111 1112",  # fails the Luhn check
    "SSN 000-12-3456 is not a valid number",
    "Order 12345 shipped on 2026-12-01 at 13:45 for $1,599.00",
    "Upgrade to Python 3.11.2 and torch 2.13.0; see section 4.2.1",
    "Summarise: the quarterly report shows revenue up 12% to 4.5 million",
])
def test_pii_detector_ignores_numbers_that_are_not_personal_data(text):
    assert router.detect_pii(text) == []


def test_an_iban_with_a_wrong_checksum_is_not_reported_as_one():
    assert "iban" not in {m.kind for m in router.detect_pii("IBAN GB82 WEST 1234 5698 7654 33")}


def test_luhn_iban_and_redaction():
    assert router.luhn_valid("79927398713") and not router.luhn_valid("79927398710")
    assert router.luhn_valid("4111-1111-1111-1111") and not router.luhn_valid("abcd")
    assert router.iban_valid("GB82WEST12345698765432") and not router.iban_valid("GB00WEST12345698765432")
    text = "Mail bob@example.com or call +1 415 555 0132, card 4111111111111111."
    assert [m.kind for m in router.detect_pii(text)] == ["email", "phone", "card"]
    assert router.redact(text) == "Mail [EMAIL] or call [PHONE], card [CARD]."
    with pytest.raises(LabkitError):
        router.detect_pii(None)


# ----------------------------------------------------------------------------- the router, rule by rule


def test_rule_privacy_keeps_personal_or_confidential_requests_local():
    r = router.route(router.UserRequest("Draft a reply to anna@example.org", complexity="high"))
    assert (r.target, r.rule) == ("local", "privacy") and "e-mail" in r.reason
    r = router.route(router.UserRequest("Summarise this contract", confidential=True, task="reasoning"))
    assert (r.target, r.rule) == ("local", "privacy")
    r = router.route(router.UserRequest("What is on this receipt? Card 4111 1111 1111 1111", needs_vision=True))
    assert (r.target, r.rule) == ("local", "privacy") and "image" in r.reason


def test_rule_modality_sends_image_requests_to_the_cloud():
    r = router.route(router.UserRequest("Describe the attached photo", needs_vision=True, complexity="high"))
    assert (r.target, r.rule) == ("cloud", "modality")


def test_rule_volume_keeps_high_volume_bulk_tasks_local_before_complexity():
    r = router.route(router.UserRequest("Label: positive or negative?", task="classification", volume="high",
                                          complexity="high"))
    assert (r.target, r.rule) == ("local", "volume")
    r = router.route(router.UserRequest("Write a parser", task="code", volume="high", complexity="high"))
    assert r.rule == "complexity"  # code is not a bulk task


def test_rule_complexity_sends_hard_requests_to_the_cloud():
    assert router.route(router.UserRequest("Prove it", complexity="high")).target == "cloud"
    assert router.route(router.UserRequest("Plan the migration", task="reasoning")).rule == "complexity"


def test_rule_default_is_local():
    r = router.route(router.UserRequest("Say hello", task="chat", complexity="medium"))
    assert (r.target, r.rule) == ("local", "default")


def test_bad_requests_are_refused():
    with pytest.raises(LabkitError, match="Accepted"):
        router.UserRequest("x", task="poetry")
    with pytest.raises(LabkitError, match="Accepted"):
        router.UserRequest("x", complexity="extreme")
    with pytest.raises(LabkitError, match="prompt"):
        router.UserRequest("   ")
    with pytest.raises(LabkitError):
        router.route({"prompt": "x"})


# ----------------------------------------------------------------------------- routing for real


class _Garbage(http.server.BaseHTTPRequestHandler):
    hits = 0
    body = b"<html>upstream overloaded</html>"

    def do_POST(self):  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def garbage_server():
    _Garbage.hits = 0
    server = http.server.HTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Garbage
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp")
    from labkit.runtimes import LlamaServer

    with LlamaServer(n_ctx=512, api_key="local-key") as server:
        yield server


def _local(server, **kw):
    return router.Endpoint("local", server.base_url, server.model, server.api_key, **kw)


HARD = router.UserRequest("The capital of France is", complexity="high", max_tokens=4)
EASY = router.UserRequest("The capital of France is", max_tokens=4)


@pytest.mark.llama
def test_router_serves_each_route_from_a_real_server_and_prices_it(llama_server):
    local = _local(llama_server, usd_per_1m_input=0.1, usd_per_1m_output=0.2)
    cloud = router.Endpoint("cloud stand-in", llama_server.base_url, llama_server.model, llama_server.api_key,
                            usd_per_1m_input=2.5, usd_per_1m_output=10.0)
    hybrid = router.HybridRouter(local, cloud)
    easy, hard = hybrid.send(EASY), hybrid.send(HARD)
    assert (easy.served_by, hard.served_by) == ("local", "cloud") and not hard.fell_back
    for res, ep in ((easy, local), (hard, cloud)):
        assert res.prompt_tokens > 0 and 0 < res.completion_tokens <= 4 and res.latency_s > 0
        assert res.cost_usd == pytest.approx(cost.api_cost(res.prompt_tokens, res.completion_tokens,
                                                           ep.usd_per_1m_input, ep.usd_per_1m_output))
    rows = router.summarize_routes(hybrid.log)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0) and {r["served by"] for r in rows} == {"local", "cloud"}
    assert "served by" in formatting.table(rows, "markdown")


@pytest.mark.llama
def test_router_falls_back_and_says_so_when_the_cloud_is_down(llama_server):
    dead = router.Endpoint("cloud", f"http://127.0.0.1:{free_port()}/v1", "gpt-4o", "sk-test", timeout_s=2)
    res = router.HybridRouter(_local(llama_server), dead).send(HARD)
    assert res.decision.target == "cloud" and res.served_by == "local" and res.fell_back
    assert "cloud unavailable" in res.note and "failed" in res.note and res.text


@pytest.mark.llama
@pytest.mark.parametrize("body", [b"<html>upstream overloaded</html>", b'{"id": "x", "object": "text_completion"}'])
def test_router_falls_back_when_the_cloud_answers_garbage(llama_server, garbage_server, body):
    url, handler = garbage_server
    handler.body = body
    res = router.HybridRouter(_local(llama_server), router.Endpoint("cloud", url, "gpt-4o", "sk-test")).send(HARD)
    assert handler.hits == 1 and res.fell_back and res.served_by == "local"


def test_a_private_request_is_never_sent_to_the_cloud_even_when_local_is_down(garbage_server):
    url, handler = garbage_server
    down = router.Endpoint("local", f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=2)
    hybrid = router.HybridRouter(down, router.Endpoint("cloud", url, "gpt-4o"))
    with pytest.raises(router.EndpointError, match="failed"):
        hybrid.send(router.UserRequest("Reply to anna@example.org", max_tokens=4))
    assert handler.hits == 0


def test_endpoints_stay_on_this_machine_unless_allowed():
    with pytest.raises(LabkitError, match="not on this machine"):
        router.Endpoint("cloud", "https://api.openai.com/v1", "gpt-4o", "sk-x").client()
    with pytest.raises(LabkitError):
        router.Endpoint("cloud", "http://127.0.0.1:1/v1", "m", usd_per_1m_input=-1)


def test_the_luhn_exercise_passes_on_the_right_answer_and_fails_with_a_hint():
    check("08.luhn", [True, False], numbers=["4111 1111 1111 1111", "4111 1111 1111 1112"])
    with pytest.raises(AssertionError, match="Hint"):
        check("08.luhn", [True, True], numbers=["4111 1111 1111 1111", "4111 1111 1111 1112"])


CARDS = ["4111 1111 1111 1111", "4111 1111 1111 1112", "5500 0000 0000 0004", "3782 822463 10005",
         "1234 5678 9012 3456"]


@pytest.mark.parametrize("slip", list(router.LUHN_SLIPS))
def test_each_luhn_slip_is_named_when_made(slip):
    answer = [router.LUHN_SLIPS[slip](n) for n in CARDS]
    assert answer != [router.luhn_valid(n) for n in CARDS]  # the slip changes the answer on the notebook's numbers
    verdict = evaluate("08.luhn", answer, numbers=CARDS)
    assert not verdict.passed and slip in verdict.message


def test_a_wrong_luhn_answer_names_the_element_that_is_off_and_a_misshapen_one_does_not_crash():
    right = [router.luhn_valid(n) for n in CARDS]
    off = list(right)
    off[2] = not off[2]
    message = evaluate("08.luhn", off, numbers=CARDS).message
    assert "number 3" in message and CARDS[2] in message
    assert "5 numbers" in evaluate("08.luhn", right[:3], numbers=CARDS).message
    assert "True or False" in evaluate("08.luhn", [1, 0, 1, 1, 0], numbers=CARDS).message
    assert "list of True/False" in evaluate("08.luhn", 7, numbers=CARDS).message
