"""The provider examples in envoy/providers/ (no Envoy needed): each compiles as part of the demo
filter configuration as it is, and, with its key source and issuer swapped for the local OIDC
issuer's, a token shaped like that IdP's yields exactly the expected roles through
`playbook-guard explain --token` (the filter's own verifier), and one lacking a required scope
or authorized party is refused with the reason the README documents."""

import json
import subprocess

import pytest
import yaml

from conftest import CLI, ROOT
from oidc_issuer import OidcIssuer

PROVIDERS = ROOT / "envoy" / "providers"

# Per IdP: what the token carries (mint's arguments) and the roles it must yield, in order.
CASES = {
    "auth0": ({"roles": ["NoETL Analyst", "Billing", "NoETL Viewer"]}, ["analyst", "viewer"]),
    "okta": ({"groups": ["Everyone", "NoETL-Developers"]}, ["developer"]),
    "entra": ({"roles": ["NoETL.Viewer"], "groups": ["5f1c0b8e-3d2a-4c6f-9b7e-1a2d3c4e5f60",
                                                      "11111111-2222-3333-4444-555555555555"]},
              ["viewer", "analyst"]),
    "cognito": ({"groups": ["noetl-admins"]}, ["admin"]),
    "keycloak": ({"roles": ["analyst"], "client_roles": ["viewer"]}, ["analyst", "viewer"]),
}

# Per IdP: tokens the example must refuse, as (extra claims, documented reason).
REFUSED = {
    "auth0": [({"scope": "openid profile email"}, "insufficient_scope"), ({"azp": None}, "missing_claim"),
              ({"azp": "another-client"}, "claim_rejected")],
    "okta": [({"scp": ["openid", "profile"]}, "insufficient_scope")],
    "entra": [({"scp": "User.Read"}, "insufficient_scope"), ({"azp": "another-app"}, "claim_rejected")],
    "cognito": [({"scope": "openid"}, "insufficient_scope"), ({"token_use": "id"}, "claim_rejected"),
                ({"client_id": "another-client"}, "claim_rejected")],
    "keycloak": [({"azp": None}, "missing_claim"), ({"azp": "account-console"}, "claim_rejected"),
                 ({"typ": "ID"}, "claim_rejected")],
}


def example(idp):
    return yaml.safe_load((PROVIDERS / f"{idp}.yaml").read_text())


@pytest.fixture(scope="module")
def issuer():
    with OidcIssuer() as issuer:
        yield issuer


def explain(config_file, token):
    out = subprocess.run([str(CLI), "explain", "--token", token, "--config", str(config_file)],
                         capture_output=True, text=True, cwd=ROOT)
    return out.returncode, out.stdout + out.stderr


def with_local_keys(tmp_path, idp, issuer):
    """The example with the issuer's `iss` and its public keys inline (the CLI reads no remote
    sets), as a filter configuration file."""
    provider = example(idp)
    del provider["discovery"]
    provider.update(issuer=issuer.issuer, jwks=issuer.jwks())
    path = tmp_path / f"{idp}.json"
    path.write_text(json.dumps({"providers": [provider]}))
    return path


def test_every_idp_has_an_example_and_a_case():
    assert sorted(p.stem for p in PROVIDERS.glob("*.yaml")) == sorted(CASES) == sorted(REFUSED)


@pytest.mark.parametrize("idp", sorted(CASES))
def test_the_example_compiles_in_the_demo_configuration(tmp_path, idp):
    config = yaml.safe_load((ROOT / "envoy" / "filter-config.yaml").read_text())
    config["providers"].append(example(idp))
    path = tmp_path / "filter-config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([str(CLI), "render", "--output", "plugin-config", "--config", str(path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["providers"][-1]["name"] == idp


@pytest.mark.parametrize("idp", sorted(CASES))
def test_a_token_shaped_like_the_idps_yields_the_expected_roles(tmp_path, issuer, idp):
    config = with_local_keys(tmp_path, idp, issuer)
    claims, roles = CASES[idp]
    code, out = explain(config, issuer.mint(idp, **claims))
    assert code == 0, out
    assert out.splitlines()[0] == f"accepted by provider {idp}"
    assert f"roles: [{', '.join(roles)}]" in out.splitlines(), out


@pytest.mark.parametrize("idp", sorted(CASES))
def test_a_token_without_a_required_scope_or_party_is_refused(tmp_path, issuer, idp):
    config = with_local_keys(tmp_path, idp, issuer)
    claims, _ = CASES[idp]
    for extra, reason in REFUSED[idp]:
        code, out = explain(config, issuer.mint(idp, **claims, **extra))
        assert (code, out.split(":")[:2]) == (1, [f"refused by provider {idp}", f" 401 {reason}"]), (extra, out)
