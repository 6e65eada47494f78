"""Local servers that speak the real protocols, so the real HTTP code paths run offline (tests, benchmarks, demo).

One module per API: :mod:`~st_workflow.testing.cmr`, :mod:`~st_workflow.testing.pds` and
:mod:`~st_workflow.testing.arxiv` (served together by :mod:`~st_workflow.testing.replay_server`),
:mod:`~st_workflow.testing.ads`, :mod:`~st_workflow.testing.openai_server` (chat completions) and the Hugging Face
hubs (:mod:`~st_workflow.testing.hub_server`, :mod:`~st_workflow.testing.hub_upload_server`). They share the
handler plumbing (:mod:`~st_workflow.testing.http`) and the fault injection (:mod:`~st_workflow.testing.faults`).
"""
