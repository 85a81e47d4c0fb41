"""splitinfer: deep-learning inference split across devices, edge servers and cloud servers."""
