"""The destination agent (`migrate agent`): a session serving one source, its handlers grouped
by concern, its journal and its own rollback. Independent of source/."""
