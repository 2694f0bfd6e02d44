"""A campaign that names a quarantined product runs with the rest and says so where people look;
a strict one fails before generating; one with nothing left fails."""

from __future__ import annotations

import json

import pytest

from adapters.steps import publish
from catalogs.models import RunRequest

# campaign_env seeds the sample catalog plus `broken-mug`, whose image is not an image: quarantined.
CAMPAIGN = (
    "name: weekly\nproducts: {ids: [rocket, broken-mug]}\nstyles: {ids: [space-age]}\n"
    "matrix: {template: '{product} on sand', seeds: [1]}\n"
    "generation: {profile: tiny, width: 64, height: 64, steps: 2}\n"
)


def test_a_quarantined_product_is_left_out_and_reported_and_the_run_goes_on(campaign_env, store, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.campaign import run_campaign

    spec = tmp_path / "weekly.yaml"
    spec.write_text(CAMPAIGN)
    summary = run_campaign(RunRequest(campaign=str(spec), triggered_by="test"))

    assert summary.images_generated == 1
    (what, why), = summary.left_out.items()
    assert what == "product broken-mug" and why.startswith("quarantined: products/broken-mug/image.png: not an image")
    assert f"  WARNING: left out product broken-mug: {why}" in summary.lines()
    manifest = json.loads(store.get(summary.manifest))
    run = publish.read_table(store, manifest, "runs").iloc[0]
    assert dict(run["left_out"]) == {"product broken-mug": why}
    assert set(publish.read_table(store, manifest, "generations")["product_id"]) == {"rocket"}
    page = store.get(summary.gallery).decode()
    assert 'class="warning" role="alert">left out product broken-mug: quarantined' in page
    this_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run["flow_run_id"]]))
    with get_client(sync_client=True) as client:
        (report,) = [a for a in client.read_artifacts(artifact_filter=this_run) if a.key == "weekly-summary"]
    assert "**Warning: left out of this run**" in report.data and "product broken-mug" in report.data

    # The same campaign, strict: it fails before anything is generated, as before.
    with pytest.raises(ValueError, match=r"campaign 'weekly': product ids \['broken-mug'\] are not in the catalog"):
        run_campaign(RunRequest(campaign=str(spec), strict=True, seeds=(2,), triggered_by="test"))
    assert {o.uri for o in store.list(f"{campaign_env['assets']}/runs/")} == {
        o.uri for o in store.list(f"{campaign_env['assets']}/runs/{summary.run_id}/")}

    # Nothing at all left to generate: a non-strict run fails too.
    only_broken = tmp_path / "broken.yaml"
    only_broken.write_text(CAMPAIGN.replace("name: weekly", "name: broken").replace("[rocket, broken-mug]", "[broken-mug]"))
    with pytest.raises(ValueError, match=r"no product .*left out: \['broken-mug'\].*nothing left to generate"):
        run_campaign(RunRequest(campaign=str(only_broken), triggered_by="test"))
