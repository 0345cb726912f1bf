"""pacs.heap: a server's start-up objects are frozen out of later collections, after the
garbage start-up left is collected."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap


def test_start_up_objects_are_frozen_and_start_up_garbage_is_not() -> None:
    # In a process of its own: a frozen heap stays frozen.
    script = textwrap.dedent(
        """
        import gc, weakref
        from pacs.heap import freeze_start_up

        class Node:
            pass

        kept = Node()
        garbage = Node()
        garbage.self = garbage  # a cycle only a collection frees
        gone = weakref.ref(garbage)
        del garbage
        gc.disable()  # no collection but ours
        freeze_start_up()
        assert gone() is None, "start-up garbage was frozen"
        assert gc.get_freeze_count() > 1000
        assert gc.is_tracked(kept) and kept not in gc.get_objects(), "kept is still walked"
        later = Node()
        later.self = later
        lost = weakref.ref(later)
        del later
        gc.collect()
        assert lost() is None, "garbage made after start-up is still collected"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
    assert gc.get_freeze_count() == 0  # the test process itself is untouched
