from platypus_ray.samples import BENCHMARK, CORPUS, write_samples

write_samples()
print(f"wrote {CORPUS} and {BENCHMARK}")
