"""What a study gives back: its summaries read from the storage (``summaries``), ``finalize``
(one model scored once on test, its result in ``final_result``, its files in
``model_files``), ``report`` (tables and figures) and the text tables they share
(``tables``).

Nothing is imported here: each command imports the modules it uses.
"""
