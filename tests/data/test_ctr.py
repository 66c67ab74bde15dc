"""CTR datasets: ml-100k-CTR split rule and features, adult split and counts, the large-set loaders on a few
real-format lines written here, and the offline error."""

from __future__ import annotations

import gzip

import polars as pl
import pytest

from recsparse.data import DatasetNotFoundError
from tests.conftest import dataset_path


def test_ml100k_ctr_time_split_and_label():
    dataset_path("ml-100k")
    from recsparse.data.ctr import load_ctr

    ds = load_ctr("ml-100k-ctr")
    assert (ds.train.height, ds.valid.height, ds.test.height) == (80_000, 10_000, 10_000)
    # time-ordered: nothing in valid/test is older than the newest training rating
    assert ds.train["timestamp"].max() <= ds.valid["timestamp"].min()
    assert ds.valid["timestamp"].max() <= ds.test["timestamp"].min()
    for f in (ds.train, ds.valid, ds.test):
        assert (f["label"] == (f["rating"] >= 4).cast(pl.Int8)).all()
    cols = {"user_id", "item_id", "age_bucket", "gender", "occupation", "zip_prefix", "genres", "release_year",
            "hour", "weekday"}
    assert cols <= set(ds.train.columns)
    assert {f.name for f in ds.spec.features} == cols
    assert ds.train["hour"].is_between(0, 23).all() and ds.train["weekday"].is_between(0, 6).all()
    assert "time-ordered 80/10/10" in ds.split_rule


def test_movielens_featurisation_helpers():
    from recsparse.data.movielens import age_bucket, year_bucket

    df = pl.DataFrame({"age": ["7", "18", "24", "56", "x"], "y": ["1995", "1999", "", "1932", "abc"]})
    out = df.select(age_bucket(pl.col("age")).alias("a"), year_bucket(pl.col("y")).alias("y"))
    assert out["a"].to_list() == ["1", "18", "18", "56", "unknown"]
    assert out["y"].to_list() == ["1995", "1995", "unknown", "1930", "unknown"]


def test_adult_standard_split_and_counts():
    dataset_path("adult")
    from recsparse.data.ctr import load_ctr

    ds = load_ctr("adult")
    assert ds.train.height + ds.valid.height == 32_561 and ds.test.height == 16_281
    assert ds.valid.height == 3_256  # the last 10 % of the train file
    assert int(ds.train["label"].sum() + ds.valid["label"].sum()) == 7_841
    assert int(ds.test["label"].sum()) == 3_846
    assert len([f for f in ds.spec.sparse]) == 8 and len(ds.spec.dense) == 6


def test_adult_bad_label_names_file_and_line(tmp_path):
    from recsparse.data import DataFormatError
    from recsparse.data.ctr import read_adult

    dataset_path("adult")
    lines = (dataset_path("adult") / "adult.test.csv").read_text().splitlines()[:4]
    lines[3] = lines[3].rsplit(",", 1)[0] + ",maybe"
    p = tmp_path / "a.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"a.csv:4: income must be"):
        read_adult(p)


CRITEO_LINES = [  # Kaggle train.txt format: label, 13 ints (empty = missing), 26 hex ids (empty = missing)
    "0\t1\t1\t5\t0\t1382\t4\t15\t2\t181\t1\t2\t\t2\t68fd1e64\t80e26c9b\tfb936136\t7b4723c4\t25c83c98\t7e0ccccf\t"
    "de7995b8\t1f89b562\ta73ee510\ta8cd5504\tb2cb9c98\t37c9c164\t2824a5f6\t1adce6ef\t8ba8b39a\t891b62e7\te5ba7672\t"
    "f54016b9\t21ddcdc9\tb1252a9d\t07b5194c\t0014c32a\t3a171ecb\tc5c50484\te8b83407\t9727dd16",
    "1\t2\t0\t44\t1\t102\t8\t2\t2\t4\t1\t1\t\t4\t68fd1e64\tf0cf0024\t6f67f7e5\t41274cd7\t25c83c98\tfe6b92e5\t"
    "922afcc0\t0b153874\ta73ee510\t2b53e5fb\t4f1b46f3\t623049e6\td7020589\tb28479f6\te6c5b5cd\tc92f3b61\t07c540c4\t"
    "b04e4670\t21ddcdc9\t5840adea\t60f6221e\t\t3a171ecb\t43f13e8b\te8b83407\t731c3655",
]


def test_criteo_loader_and_spec_on_real_format_lines(tmp_path):
    from recsparse.data.ctr import criteo_spec, scan_ctr

    d = tmp_path / "criteo"
    d.mkdir()
    (d / "train.txt").write_text("\n".join(CRITEO_LINES) + "\n")
    lf = scan_ctr("criteo", folder=d)
    df = lf.collect()
    assert df.height == 2 and df["label"].to_list() == [0, 1]
    assert df["I12"].null_count() == 2 and df["C1"][0] == "68fd1e64"
    fitted = criteo_spec(min_count=1).fit(lf)
    b = next(fitted.batches(lf, batch_size=2))
    assert b.dense.shape == (2, 13) and torch_finite(b.dense)
    assert b.sparse["C1"].values().tolist() == [int("68fd1e64", 16)] * 2
    c22 = b.sparse["C22"].values()
    assert c22.tolist() == [int("0014c32a", 16), -1]  # a missing id -> -1 ...
    m = fitted.mappers["C22"]
    assert m.transform(c22)[:, 0].tolist() == [0, m.num_rows - 1]  # ... -> the OOV row


def torch_finite(t):
    import torch

    return bool(torch.isfinite(t).all())


def test_avazu_loader_on_real_format_lines(tmp_path):
    from recsparse.data.ctr import avazu_spec, scan_ctr

    header = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
              "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")
    rows = ["1000009418151094273,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,"
            "a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79",
            "10000169349117863715,1,14102101,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,"
            "a99f214a,96809ac8,711ee120,1,0,15704,320,50,1722,0,35,100084,79"]
    d = tmp_path / "avazu"
    d.mkdir()
    with gzip.open(d / "train.gz", "wt") as f:
        f.write("\n".join([header, *rows]) + "\n")
    lf = scan_ctr("avazu", folder=d)
    df = lf.collect()
    assert df["label"].to_list() == [0, 1] and df["hour_of_day"].to_list() == [0, 1]
    assert df["weekday"].to_list() == [1, 1]  # 2014-10-21 was a Tuesday
    fitted = avazu_spec(min_count=1).fit(lf)
    assert len(next(fitted.batches(lf, 2))) == 2


def test_bars_frappe_loader_on_real_format_lines(tmp_path):
    from recsparse.data.ctr import scan_ctr

    d = tmp_path / "frappe_x1"
    d.mkdir()
    text = ("label,user,item,daytime,weekday,isweekend,homework,cost,weather,country,city\n"
            "1,0,0,morning,sunday,weekend,unknown,free,sunny,United States,0\n"
            "0,1,1,evening,monday,workday,home,paid,cloudy,Spain,353\n")
    for part in ("train", "valid", "test"):
        (d / f"{part}.csv").write_text(text)
    from recsparse.data.ctr import frappe_spec

    lf = scan_ctr("frappe_x1", "valid", folder=d)
    fitted = frappe_spec().fit(lf)
    b = next(fitted.batches(scan_ctr("frappe_x1", "test", folder=d), 2))
    assert b.label.tolist() == [1.0, 0.0] and len(b.sparse.keys()) == 10


def test_large_sets_give_a_clear_offline_error(monkeypatch, tmp_path):
    from recsparse.data import dataset_dir

    monkeypatch.setenv("RECSPARSE_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=r"(?s)'criteo' is not available .*train.txt.*ailab.criteo.com"):
        dataset_dir("criteo")
    from recsparse.data.ctr import load_ctr

    with pytest.raises(KeyError, match="stream it with scan_ctr"):
        load_ctr("criteo")
