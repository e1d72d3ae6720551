-- wrk script: POST a small chat completion request (the body may be replaced with env BENCH_BODY).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "bench")
local target = os.getenv("BENCH_TARGET")
if target then wrk.headers["target"] = target end
wrk.body = os.getenv("BENCH_BODY") or '{"model":"bench","messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
