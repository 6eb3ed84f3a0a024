"""Quality of a KV-cache type measured the way llama.cpp measures it: teacher-forced KL divergence.

``kld`` has the statistics, ``teacher`` the HTTP client that gets one side's
distributions from llama-server, ``scoring`` the orchestration over sides and
chunks of a text.
"""

DEFAULT_CTX = 512  # chunk length, llama-perplexity's -c
DEFAULT_TOP_K = 1000  # n_probs per position: the KLD bound reads about 3% low at 1000 on Gemma 3 270M, 16% at 100
