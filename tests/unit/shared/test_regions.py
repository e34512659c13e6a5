from datetime import UTC, datetime

import pytest

from shared.regions import RegionConfigError, UnknownRegion, catalogue, load_catalogue


def test_shipped_catalogue_has_the_brief_regions():
    cat = catalogue()
    for code in ("US", "GB", "SG", "MY", "ID", "TH", "VN", "PH"):
        assert code in cat
    assert cat.get("ID").exponent == 0
    assert cat.get("GB").currency == "GBP"


def test_local_time_uses_the_region_zone():
    instant = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
    assert catalogue().get("SG").local(instant).day == 1  # already 1 Dec in Singapore
    with pytest.raises(ValueError, match="timezone-aware"):
        catalogue().get("SG").local(datetime(2026, 1, 1))


def test_unknown_region_is_a_clear_error():
    with pytest.raises(UnknownRegion, match="unknown region 'ZZ'"):
        catalogue().get("ZZ")


def test_a_region_is_added_by_configuration_alone(tmp_path, monkeypatch):
    f = tmp_path / "regions.yaml"
    f.write_text("regions:\n  - {code: BR, name: Brazil, currency: BRL, exponent: 2, timezone: America/Sao_Paulo}\n"
                 "  - {code: US, currency: USD, exponent: 2, timezone: America/New_York}\n")
    cat = load_catalogue(f)
    assert cat.get("BR").currency == "BRL"
    monkeypatch.setenv("REGIONS_FILE", str(f))
    catalogue.cache_clear()
    try:
        from shared.money import Money
        assert Money.from_major("1.23", "BRL").minor == 123
    finally:
        monkeypatch.delenv("REGIONS_FILE")
        catalogue.cache_clear()


@pytest.mark.parametrize(("entry", "message"), [
    ("{code: br, currency: BRL, exponent: 2, timezone: UTC}", "code"),
    ("{code: BR, currency: BRLX, exponent: 2, timezone: UTC}", "currency"),
    ("{code: BR, currency: BRL, exponent: 9, timezone: UTC}", "exponent"),
    ("{code: BR, currency: BRL, exponent: 2, timezone: Mars/Base}", "timezone"),
    ("{code: BR, currency: BRL, exponent: 2}", "missing field"),
])
def test_bad_catalogue_names_entry_and_field(tmp_path, entry, message):
    f = tmp_path / "regions.yaml"
    f.write_text(f"regions:\n  - {entry}\n")
    with pytest.raises(RegionConfigError, match=message) as exc:
        load_catalogue(f)
    assert "regions[0]" in str(exc.value)
