"""Local models: embedding functions that run a model on this machine's CPU or GPU.

The family in one folder, because its pieces only make sense together: the
functions (:mod:`.sentence_transformer`, :mod:`.default`, :mod:`.instructor`),
how a model is found and loaded (:mod:`.models`), how a call's texts become
batches (:mod:`.token_batches`, :mod:`.model_inputs`), the libraries that run
it (:mod:`.backends`, :mod:`.onnx_export`) and the guard that lets a reduced
precision in only where it keeps the vectors (:mod:`.quality_guard`,
:mod:`.precision_guard`, :mod:`.guard_corpus`, :mod:`.machine_cache`).

Nothing is imported here: ``embedfleet.embedding_functions`` re-exports the
public classes, and importing one module of the family (as ``embedfleet bench``
does) does not pull in the rest.
"""
