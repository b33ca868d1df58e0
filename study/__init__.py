"""Human A/B preference study (the paper's Table 4): build blinded pairs from finished runs, collect answers in a
local web app or on a crowdsourcing platform, and analyze them (`docs/study.md`)."""
