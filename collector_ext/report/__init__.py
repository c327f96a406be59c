"""Period reports: the verified records of a time range, with the bounds that prove it complete.

``model`` holds the data; ``period`` selects and bounds (pure); ``rows`` reads a record's fields;
``summaries`` counts; ``csv_jsonl``, ``html`` render; ``manifest`` pins a report; ``run`` drives it
over an archive.
"""
