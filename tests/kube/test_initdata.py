"""Init-data, checked against the format of the Confidential Containers / Kata Containers
documents: the Initdata Specification (trustee ``kbs/docs/initdata.md``), Kata's implementation
(``kata-types/src/initdata.rs``: digest over the document's bytes, then cut or zero-padded to
the TEE field — SNP 32, TDX 48) and the annotation of Kata's agent-policy how-to (base64 of the
gzipped TOML).  No cluster and no TEE here: this is the computation both sides run."""

from __future__ import annotations

import base64
import gzip
import hashlib

import pytest

from keepbook.keep.shared import initdata as idata
from keepbook.keep.shared import pod_keep

#: the annotation value printed in Kata Containers' docs/how-to/how-to-use-the-kata-agent-policy.md
#: (an init-data document carrying allow-all-except-exec-process.rego)
KATA_DOC_ANNOTATION = (
    "H4sIAAAAAAAAA42UTW/TQBCG7/4Vq/QQOCQKQXCo1ENIAkRqiGWnpBJCaGKP7RXrXTM7DnV/PRMiVUh07R582J3H8/XO7AnJa2fVjRrNpm+ms1EEpnSkuarPd76C+bv3oyj6lgPD92jUOKOzbkpYupEA4/E4ulJL13Sky4rVq+y1ms/mb9VWZ+S8K1iM1DgClijRlcBpvLqf3OoMrcfJJkfLutBI12rRQFbhZD6dCRfJ4SeUqOSz/OMSNopyLKA1rBZ5vkjiLyhBj458gr9a9KyubxRTi/9i6W9oQualcR5TzrUNElLZR20waCcExqWzDNoi9WMp2PzoHkLQSi7JdQPUJ+QtMuksWLQQu912fZK+BZHz7QolaRN0c6s9bywjFZBhL5W4lsPEFuvPjhvTlh+6mNwx2MudNdLDZXwnf4SYGFo/3O64NWZTy+SEgAQhT1lECQZKsHan4UgXLGUw+FWTzHjh0woIt661HGxJgh4xT0RoV6/w1IO19XAOKfJFTxmxva6DRQsX/12jIKBLC0Y0Er2DuUutxMM5nak9QaZt2cOwf4En1ww42nN3OK+w14/B4u+a/CWLesHWTYU1Eph+GS/w0470Y/1LcgDNA40/yKOMzw/tE7N+wOx/NwUYj9H5qf4DsX93tO4FAAA=")
IMAGE = pod_keep.ImageRef.parse("registry.example/keepbook/keep@sha256:" + "ab" * 32)


def test_the_kata_docs_annotation_is_read_as_kata_reads_it():
    document = idata.decode_annotation(KATA_DOC_ANNOTATION)
    doc = idata.parse(document)
    assert doc.algorithm == "sha256" and set(doc.data) == {"policy.rego"}
    assert "default ExecProcessRequest := false" in doc.data["policy.rego"]
    # sha256 over the document's bytes: exactly the 32 bytes of SNP HOST_DATA, and TDX's
    # 48-byte MRCONFIGID padded with 16 zero bytes (kata-types adjust_digest)
    digest = hashlib.sha256(document.encode()).digest()  # the Kata doc gives no digest to copy
    assert idata.tee_field(document, "snp") == digest
    assert idata.tee_field(document, "tdx") == digest + bytes(16)
    assert idata.tee_field(document, "cca") == digest + bytes(32)


@pytest.mark.parametrize("algorithm, platform, size, rule", [
    ("sha384", "snp", 32, "cut"), ("sha512", "snp", 32, "cut"), ("sha256", "snp", 32, "same"),
    ("sha384", "tdx", 48, "same"), ("sha512", "tdx", 48, "cut"), ("sha256", "tdx", 48, "pad"),
])
def test_the_digest_is_cut_or_zero_padded_to_the_tee_field(algorithm, platform, size, rule):
    document = idata.InitData(algorithm=algorithm, data={"k": "v"}).render()
    full = hashlib.new(algorithm, document.encode()).digest()
    got = idata.tee_field(document, platform)
    assert len(got) == size
    if rule == "pad":
        assert got == full + bytes(size - len(full))
    else:
        assert got == full[:size]


def test_the_digest_covers_the_bytes_as_delivered_not_a_canonical_form():
    """Kata hashes the document it was given; two spellings of the same contents differ —
    which is why the host and the client render it with the same function."""
    a = 'version = "0.1.0"\nalgorithm = "sha384"\n\n[data]\nk = "v"\n'
    b = 'algorithm = "sha384"\nversion = "0.1.0"\n[data]\nk = "v"\n'
    assert idata.parse(a) == idata.parse(b)
    assert idata.document_digest(a) != idata.document_digest(b)


@pytest.mark.parametrize("value", [
    "plain", "line one\nline two\n", "has ''' inside", "ends with a quote'", "tab\there",
    "control \x01 char", 'quote " and back\\slash', "crlf\r\nline", "unicode é ✓", ""])
def test_render_is_read_back_exactly(value):
    doc = idata.InitData(algorithm="sha256", data={"policy.rego": value, 'odd "key"': value})
    assert idata.parse(doc.render()) == doc
    assert doc.render() == idata.InitData(algorithm="sha256", data=dict(
        reversed(list(doc.data.items())))).render()  # key order does not matter


def test_annotation_round_trip_is_deterministic():
    document = pod_keep.init_data(IMAGE, "coco-snp").render()
    value = idata.encode_annotation(document)
    assert value == idata.encode_annotation(document)
    assert idata.decode_annotation(value) == document


@pytest.mark.parametrize("value, why", [
    ("not base64!", "not base64"),
    (base64.b64encode(b"plain text").decode(), "not gzip"),
    (base64.b64encode(gzip.compress(b"\0" * (idata.MAX_DOCUMENT_BYTES + 10))).decode(), "more than"),
    (base64.b64encode(gzip.compress(b"\xff\xfe")).decode(), "not UTF-8"),
    (base64.b64encode(gzip.compress(b'version = "0.2.0"\nalgorithm = "sha256"\n')).decode(), "version"),
    (base64.b64encode(gzip.compress(b'version = "0.1.0"\nalgorithm = "md5"\n')).decode(), "algorithm"),
    (base64.b64encode(gzip.compress(b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nk = 1\n')).decode(),
     "strings to strings"),
    (base64.b64encode(gzip.compress(b'version = "0.1.0"\nalgorithm = "sha256"\nx = 1\n')).decode(), "unknown key"),
    (base64.b64encode(gzip.compress(b'version = "0.1.0"\nalgorithm = "sha256"\n')[:-6]).decode(), "gzip"),
])
def test_bad_annotations_are_refused_naming_the_check(value, why):
    with pytest.raises(idata.InitDataError, match=why):
        idata.decode_annotation(value)


def test_unknown_platform_is_named():
    with pytest.raises(idata.InitDataError, match="no init-data field on 'sgx'"):
        idata.tee_field(idata.InitData().render(), "sgx")


# ---------------------------------------------------------------------- keepbook's init-data


def test_the_agent_policy_denies_exec_attach_and_log_reads():
    policy = pod_keep.agent_policy(IMAGE, "coco-snp")
    assert policy.startswith("package agent_policy\n")
    for verb, requests in pod_keep.DENIED_REQUESTS.items():
        for r in requests:
            assert f"default {r} := false" in policy, (verb, r)
            assert f"\n{r} {{" not in policy, f"a rule could allow {r} ({verb})"
    assert "default CreateContainerRequest := false" in policy


def test_the_agent_policy_pins_the_image_digest_and_the_command():
    policy = pod_keep.agent_policy(IMAGE, "coco-tdx")
    assert f'"io.kubernetes.cri.image-name"] == "{IMAGE}"' in policy
    args = pod_keep.container_args("coco-tdx")
    assert args[:3] == [pod_keep.PYTHON, "-m", "keepbook.keep.inside.pod"]
    assert "input.OCI.Process.Args == " + str(args).replace("'", '"') in policy


def test_the_expected_field_changes_with_the_image_and_the_backend():
    other = pod_keep.ImageRef.parse("registry.example/keepbook/keep@sha256:" + "cd" * 32)
    snp = pod_keep.expected_tee_field(IMAGE, "coco-snp")
    assert snp[0] == "host_data" and len(snp[1]) == 32
    tdx = pod_keep.expected_tee_field(IMAGE, "coco-tdx")
    assert tdx[0] == "mrconfigid" and len(tdx[1]) == 48
    assert pod_keep.expected_tee_field(other, "coco-snp")[1] != snp[1]
    assert tdx[1][:32] != snp[1]  # the backend is part of the policy (its command line)
    document = pod_keep.init_data(IMAGE, "coco-snp").render()
    assert snp[1] == hashlib.sha384(document.encode()).digest()[:32]


@pytest.mark.parametrize("ref, why", [
    ("registry.example/keep:latest", "not pinned by digest"),
    ("registry.example/keep:v1@sha256:" + "ab" * 32, "tag as well as a digest"),
    ("Registry.example/Keep@sha256:" + "ab" * 32, "not a container image repository"),
    ("registry.example/keep@sha256:" + "AB" * 32, "not a sha256 image digest"),
    ("registry.example/keep@sha512:" + "ab" * 64, "not a sha256 image digest"),
    ("keep@sha256:" + "ab" * 32, "not a container image repository"),
])
def test_image_references_must_be_digest_pinned(ref, why):
    with pytest.raises(pod_keep.PodKeepError, match=why):
        pod_keep.ImageRef.parse(ref)


def test_the_published_pin_says_plainly_that_nothing_was_published(tmp_path):
    assert pod_keep.published_image() is None  # keep/container/published.toml: digest = ""
    pin = tmp_path / "published.toml"
    pin.write_text('repository = "registry.example/keepbook/keep"\ndigest = "sha256:' + "ef" * 32 + '"\n')
    assert str(pod_keep.published_image(pin)).endswith("ef" * 32)
    pin.write_text('repository = "registry.example/keepbook/keep"\ndigest = "latest"\n')
    with pytest.raises(pod_keep.PodKeepError, match="sha256 image digest"):
        pod_keep.published_image(pin)
