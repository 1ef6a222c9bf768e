from platypus_ray.samples import BENCHMARK, CHAT, CORPUS, write_samples

write_samples()
print(f"wrote {CORPUS}, {BENCHMARK} and {CHAT}")
