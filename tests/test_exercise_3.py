"""Exercise 3 (pre-train, then fine-tune): the corpus tool's rule against overlap, and its cleaning."""

import gzip
import io
import tarfile

from conftest import one_line_error
from tools import corpus

# -- the corpus: the rule against overlap, and the dictionary's cleaning ---------------------------


def test_normalising_hides_no_quotation_behind_case_breaks_or_punctuation():
    assert corpus.normalise("O Romeo,\nRomeo!  wherefore") == "o romeo romeo wherefore"
    play = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east."
    quoted = 'as, "but soft, what light through\n   yonder window breaks." --Shak.'
    reference = corpus.reference_windows(play)
    assert corpus.shared_runs(quoted, reference)[0] == " but soft what light through y"
    assert corpus.overlapping(["a line of its own, shared with nothing at all", quoted], reference) == [False, True]


def test_a_run_one_character_shorter_than_the_window_is_no_overlap():
    play = "x" + "abcdefghij" * 3 + "y"
    reference = corpus.reference_windows(play)
    assert corpus.overlapping(["abcdefghij" * 3, ("abcdefghij" * 3)[:-1]], reference) == [True, False]
    # a run never spans two paragraphs: each half of the play's run is in another one
    halves = ["abcdefghijabcde", "fghijabcdefghij"]
    assert corpus.overlapping(halves, reference) == [False, False]
    assert corpus.overlapping([], reference) == [] and corpus.shared_runs("", reference) == []


def test_overlap_is_found_across_the_chunks_paragraphs_are_hashed_in():
    reference = corpus.reference_windows("the quality of mercy is not strained, it droppeth")
    paragraphs = [f"paragraph {i} says nothing much" for i in range(50)]
    paragraphs[37] = "The quality of mercy is not strained."
    assert corpus.overlapping(paragraphs, reference, chunk=100).index(True) == 37
    assert sum(corpus.overlapping(paragraphs, reference, chunk=100)) == 1


DICTIONARY = """00-database-short
   A dictionary

Abandon \\A*ban"don\\ ([.a]*b[a^]n"d[u^]n), v. t. [imp. & p. p.
   {Abandoned}; p. pr. & vb. n. {Abandoning}.] [OF. abandoner.]
   1. To cast or drive out; to banish. [Obs.]
      [1913 Webster]

            Being all this time abandoned from your bed. --Shak.
      [1913 Webster]

   Syn: To give up; yield; forego; ca[~n]on; A`ble-mind"ed*ness.

Abase \\A*base"\\, v. t.
   To lower. "Now is the winter of our discontent." --Anon.
   [1913 Webster]

   A formula: x^2 + y^2 = z^2.

Abate \\A*bate"\\, v. t.
   To beat down; to lessen.
"""


def test_the_dictionary_is_cleaned_and_each_rule_removes_its_paragraphs():
    cleaned, removed = corpus.build(DICTIONARY, "Now is the winter of our discontent\nMade glorious summer.")
    entries = cleaned.strip().split("\n\n")  # Abase's two paragraphs are gone: the winter, and the formula
    assert sorted(entries) == [
        "Abandon, v. t.\n1. To cast or drive out; to banish.\nSyn: To give up; yield; forego; canon; Able-mindedness.",
        "Abate, v. t.\nTo beat down; to lessen.",
    ]
    # a character outside (the formula), a shared run (the winter), a quotation (the --Shak. line)
    assert [r.paragraphs for r in removed.values()] == [1, 1, 1]
    assert "00-database" not in cleaned and "[" not in cleaned and "\\" not in cleaned


def test_the_tool_reads_the_debian_package_and_refuses_a_missing_file_in_one_line(tmp_path, capsys):
    dict_dz = gzip.compress(DICTIONARY.encode("utf-8"))
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        member = tarfile.TarInfo("./" + corpus.DICT_MEMBER)
        member.size = len(dict_dz)
        tar.addfile(member, io.BytesIO(dict_dz))
    deb = b"!<arch>\n"
    for name, body in (("debian-binary", b"2.0\n"), ("data.tar.xz", data.getvalue())):
        deb += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body + b"\n" * (len(body) % 2)
    (tmp_path / "dict-gcide.deb").write_bytes(deb)
    (tmp_path / "play.txt").write_text("Now is the winter of our discontent\n", encoding="utf-8")
    out = tmp_path / "gcide.txt"
    argv = [str(tmp_path / "dict-gcide.deb"), "--out", str(out), "--shakespeare", str(tmp_path / "play.txt")]
    assert corpus.main(argv) == 0
    said = capsys.readouterr().out
    assert "(not the gcide.dict.dz measured)" in said and "for a quotation of Shakespeare" in said
    assert out.read_text(encoding="utf-8").count("\n\n") == 1  # two entries
    code = corpus.main([str(tmp_path / "none.deb")])
    one_line_error(code, capsys.readouterr().err, "none.deb: no such file; get it with apt-get download dict-gcide")
