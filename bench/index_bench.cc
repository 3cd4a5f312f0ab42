/*
 * index_bench.cc — the learned index against classic searches over the same
 * sorted uint64 array, in one run, on one thread (google-benchmark).
 *
 * For every size in the list and every key distribution, one data set is
 * generated (splitmix64, fixed seed, exactly n distinct sorted keys in a
 * 64-byte-aligned array), the RMI is trained on it (build time measured),
 * and 2^20 queries are drawn: half random present keys, half random absent
 * keys (a random value strictly inside a random gap). Then each method runs
 * the same query stream and every answer is checked once against
 * std::lower_bound before timing:
 *   rmi/<kernel>   rmi_lower_bound_with() with each probe kernel the CPU runs
 *   branchless     binary search with a conditional move, no prefetch
 *   std            std::lower_bound
 *   eytzinger      branchless search over a BFS-ordered copy with prefetch
 *                  (returns a slot of that copy, not a rank: a rank needs a
 *                  second array or more work, which favours it here)
 * Time is CPU time per lookup (queries are independent, so a method's memory-level
 * parallelism counts, as it would in a real read loop). RMI rows carry
 * counters: probe (mean window, positions), max_err (widest window),
 * model_pct (model bytes / key array bytes * 100), build_ns_key, fallbacks.
 * At the end a markdown table summarises each size: ns per lookup per
 * method, and the ratio of the RMI with the kernel the library picks
 * (probe_best) to the branchless search.
 *
 *   index_bench [--sizes=1000000,10000000,50000000] [--dists=uniform,...]
 *               [google-benchmark flags]
 * KYRO_INDEX_SIZES in the environment sets the default size list.
 * Defaults to --benchmark_min_time=0.1 --benchmark_repetitions=3 unless
 * given; each cell keeps its fastest repetition (a shared machine makes the
 * others slow, not the method). The full default run takes about 6 minutes
 * and 2 GB of memory.
 */
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <vector>

extern "C" {
#include "kyro.h"
#include "probe.h"
#include "rmi.h"
}

namespace {

// ---- keys ---------------------------------------------------------------

struct Rng {
    uint64_t s;
    uint64_t next()
    {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    double unif() { return ((double)(next() >> 11) + 0.5) * 0x1p-53; } // (0, 1)
    double gauss() { return std::sqrt(-2 * std::log(unif())) * std::cos(6.283185307179586 * unif()); }
};

uint64_t from_double(double x)
{
    if (!(x > 0))
        return 0;
    if (x >= 18446744073709551615.0)
        return UINT64_MAX;
    return (uint64_t)x;
}

const char *const kDists[] = { "uniform-dense", "uniform-sparse", "lognormal", "normal",
                               "clustered",     "seq-gaps",       "heavy-tail" };
constexpr int kNumDists = 7;

// Raw draws (with duplicates, any order) of distribution d.
void draw(int d, size_t m, size_t n, Rng &r, std::vector<uint64_t> &out)
{
    out.clear();
    out.reserve(m);
    switch (d) {
    case 0: // about half of the integers in [0, 2n)
        for (size_t i = 0; i < m; i++)
            out.push_back(r.next() % (2 * (uint64_t)n));
        break;
    case 1:
        for (size_t i = 0; i < m; i++)
            out.push_back(r.next());
        break;
    case 2: // SOSD-style lognormal(0, 2) scaled
        for (size_t i = 0; i < m; i++)
            out.push_back(from_double(std::exp(2.0 * r.gauss()) * 1e9));
        break;
    case 3:
        for (size_t i = 0; i < m; i++)
            out.push_back(from_double(9.2e18 + r.gauss() * 1e17));
        break;
    case 4: {
        // Cell-id-like: many clusters at random places in the key space,
        // skewed sizes (a few cities, many villages), each with its own
        // spacing from 1 to 2^16 (cell level) and filled about 1 in 4.
        size_t nc = std::max<size_t>(64, n / 1000);
        std::vector<uint64_t> base(nc), span(nc), step(nc);
        for (size_t c = 0; c < nc; c++) {
            base[c] = r.next();
            step[c] = 1ull << (r.next() % 17);
            // share of the draws that pick c below, so fill is about 1 in 4
            double p = std::pow((double)(c + 1) / (double)nc, 0.4) - std::pow((double)c / (double)nc, 0.4);
            span[c] = 1 + (uint64_t)(4 * p * (double)n);
        }
        for (size_t i = 0; i < m; i++) {
            size_t c = (size_t)((double)nc * std::pow(r.unif(), 2.5)); // skewed choice
            uint64_t k = base[c] + (r.next() % span[c]) * step[c];
            out.push_back(k < base[c] ? UINT64_MAX - (r.next() % 1000) : k);
        }
        break;
    }
    case 5: { // runs of consecutive ids with random gaps
        uint64_t run = 1000;
        for (size_t i = 0; i < m; i++) {
            run += (r.next() % 20 == 0) ? 1 + r.next() % 1000000 : 1;
            out.push_back(run);
        }
        break;
    }
    default: // user ids: Pareto(1.1) body from 1e9 (sparse enough that
             // draws rarely collide), 0.1% outliers near the top
        for (size_t i = 0; i < m; i++)
            out.push_back(r.next() % 1000 == 0 ? UINT64_MAX - r.next() % 100000000
                                               : from_double(1e9 / std::pow(r.unif(), 1 / 1.1)));
        break;
    }
}

// LSD radix sort, 16 bits a pass (std::sort of 50M keys takes several
// seconds, and there are seven data sets per size); passes whose digit is
// the same for every key are skipped.
void radix_sort(std::vector<uint64_t> &v)
{
    size_t n = v.size();
    std::vector<uint64_t> tmp(n);
    std::vector<size_t> cnt(4 * 65536, 0);
    for (uint64_t x : v)
        for (int p = 0; p < 4; p++)
            cnt[p * 65536 + ((x >> (16 * p)) & 0xffff)]++;
    uint64_t *src = v.data(), *dst = tmp.data();
    for (int p = 0; p < 4; p++) {
        size_t *c = &cnt[p * 65536];
        if (n == 0 || c[(src[0] >> (16 * p)) & 0xffff] == n)
            continue;
        size_t sum = 0;
        for (size_t d = 0; d < 65536; d++) {
            size_t t = c[d];
            c[d] = sum;
            sum += t;
        }
        for (size_t i = 0; i < n; i++)
            dst[c[(src[i] >> (16 * p)) & 0xffff]++] = src[i];
        std::swap(src, dst);
    }
    if (src != v.data())
        std::copy(src, src + n, v.data());
}

// Exactly n distinct sorted keys: oversample, dedupe, thin out evenly.
uint64_t *make_keys(int d, size_t n)
{
    Rng r{ 0x5eed0000ull + (uint64_t)d * 7919 + n };
    std::vector<uint64_t> v;
    size_t m = n + n / 8 + 64;
    for (;;) {
        draw(d, m, n, r, v);
        radix_sort(v);
        v.erase(std::unique(v.begin(), v.end()), v.end());
        if (v.size() >= n)
            break;
        m += m / 2 + (n - v.size()) * 4; // dense draws collide; ask for more
    }
    size_t bytes = ((n ? n : 1) * sizeof(uint64_t) + 63) & ~(size_t)63;
    uint64_t *k = (uint64_t *)aligned_alloc(64, bytes);
    if (!k)
        abort();
    size_t c = v.size(), j = 0;
    for (size_t i = 0; i < c; i++)
        if ((i + 1) * n / c > i * n / c)
            k[j++] = v[i];
    if (j != n)
        abort();
    return k;
}

// ---- classic searches ----------------------------------------------------

size_t branchless_lb(const uint64_t *a, size_t n, uint64_t key)
{
    if (n == 0)
        return 0;
    const uint64_t *base = a;
    size_t len = n;
    while (len > 1) {
        size_t half = len / 2;
        base += (base[half] < key) ? half : 0; // compiles to cmov
        len -= half;
    }
    return (size_t)(base - a) + (*base < key);
}

// b[1..n] in BFS order of the implicit complete tree; b[0] unused.
void eytz_fill(const uint64_t *keys, uint64_t *b, size_t n, size_t &i, size_t k)
{
    if (k > n)
        return;
    eytz_fill(keys, b, n, i, 2 * k);
    b[k] = keys[i++];
    eytz_fill(keys, b, n, i, 2 * k + 1);
}

// Slot in b of the lower bound, 0 when every key is smaller.
size_t eytz_lb(const uint64_t *b, size_t n, uint64_t key)
{
    size_t k = 1;
    while (k <= n) {
        __builtin_prefetch(b + 8 * k); // the 8 descendants three levels down share a line
        k = 2 * k + (b[k] < key);
    }
    return k >> __builtin_ffsll((long long)~k);
}

// ---- the current data set ------------------------------------------------

struct Data {
    int dist = -1;
    size_t n = 0;
    uint64_t *keys = nullptr;
    uint64_t *eytz = nullptr;
    rmi *model = nullptr;
    std::vector<uint64_t> q; // queries
    std::vector<size_t> want;
    double build_ns_key = 0;
    double probe = 0;
    double fallbacks = 0;

    void clear()
    {
        rmi_free(model);
        free(keys);
        free(eytz);
        model = nullptr;
        keys = eytz = nullptr;
        q.clear();
        q.shrink_to_fit();
        want.clear();
        want.shrink_to_fit();
        dist = -1;
    }
};

Data g;

double thread_ns()
{
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

constexpr size_t kQueries = 1u << 20;

void load(int d, size_t n)
{
    if (g.dist == d && g.n == n)
        return;
    g.clear();
    g.dist = d;
    g.n = n;
    g.keys = make_keys(d, n);
    const uint64_t *k = g.keys;

    // thread CPU time: on a shared machine wall time also counts other jobs
    double t0 = thread_ns();
    if (rmi_build(k, n, &g.model) != KV_OK)
        abort();
    g.build_ns_key = (thread_ns() - t0) / (double)n;

    g.eytz = (uint64_t *)aligned_alloc(64, ((n + 1) * sizeof(uint64_t) + 63) & ~(size_t)63);
    if (!g.eytz)
        abort();
    size_t i = 0;
    eytz_fill(k, g.eytz, n, i, 1);

    Rng r{ 0x9e3779b97f4a7c15ull ^ n ^ ((uint64_t)d << 40) };
    g.q.resize(kQueries);
    g.want.resize(kQueries);
    for (size_t j = 0; j < kQueries; j++) {
        uint64_t key = k[r.next() % n];
        if (j & 1) {
            for (int t = 0; t < 64; t++) {
                size_t p = r.next() % (n - 1);
                uint64_t gap = k[p + 1] - k[p];
                if (gap > 1) {
                    key = k[p] + 1 + r.next() % (gap - 1);
                    break;
                }
            }
        }
        g.q[j] = key;
        g.want[j] = (size_t)(std::lower_bound(k, k + n, key) - k);
    }
    size_t probed_sum = 0, fb = 0;
    for (size_t j = 0; j < kQueries; j++) {
        size_t probed = 0;
        int f = 0;
        rmi_lower_bound(g.model, k, g.q[j], &probed, &f);
        probed_sum += probed;
        fb += (size_t)f;
    }
    g.probe = (double)probed_sum / kQueries;
    g.fallbacks = (double)fb;
}

// ---- benchmarks ----------------------------------------------------------

enum Method { M_SCALAR, M_AVX2, M_AVX512, M_BRANCHLESS, M_STD, M_EYTZ, M_COUNT };
const char *const kMethods[M_COUNT] = { "rmi/scalar", "rmi/avx2", "rmi/avx512",
                                        "branchless", "std",      "eytzinger" };

probe_fn kernel_of(int m)
{
    return m == M_SCALAR ? probe_scalar : m == M_AVX2 ? probe_avx2() : probe_avx512();
}

size_t lookup(int m, uint64_t key)
{
    switch (m) {
    case M_BRANCHLESS:
        return branchless_lb(g.keys, g.n, key);
    case M_STD:
        return (size_t)(std::lower_bound(g.keys, g.keys + g.n, key) - g.keys);
    case M_EYTZ:
        return eytz_lb(g.eytz, g.n, key);
    default:
        return rmi_lower_bound_with(g.model, g.keys, key, kernel_of(m), nullptr, nullptr);
    }
}

bool answer_ok(int m, size_t got, size_t j)
{
    size_t w = g.want[j];
    if (m != M_EYTZ)
        return got == w;
    return w == g.n ? got == 0 : got != 0 && g.eytz[got] == g.keys[w];
}

template <int M>
void run_method(benchmark::State &state, int d, size_t n)
{
    load(d, n);
    for (size_t j = 0; j < kQueries; j += 7)
        if (!answer_ok(M, lookup(M, g.q[j]), j)) {
            state.SkipWithError("wrong answer");
            return;
        }
    const uint64_t *q = g.q.data();
    size_t j = 0;
    for (auto _ : state) {
        size_t r;
        if constexpr (M == M_BRANCHLESS)
            r = branchless_lb(g.keys, g.n, q[j]);
        else if constexpr (M == M_STD)
            r = (size_t)(std::lower_bound(g.keys, g.keys + g.n, q[j]) - g.keys);
        else if constexpr (M == M_EYTZ)
            r = eytz_lb(g.eytz, g.n, q[j]);
        else
            r = rmi_lower_bound_with(g.model, g.keys, q[j], kernel_of(M), nullptr, nullptr);
        benchmark::DoNotOptimize(r);
        j = (j + 1) & (kQueries - 1);
    }
    if (M <= M_AVX512) {
        state.counters["probe"] = g.probe;
        state.counters["max_err"] = (double)rmi_max_error(g.model);
        state.counters["model_pct"] =
            100.0 * (double)rmi_memory_bytes(g.model) / ((double)n * sizeof(uint64_t));
        state.counters["build_ns_key"] = g.build_ns_key;
        state.counters["fallbacks"] = g.fallbacks;
    }
}

using BenchFn = void (*)(benchmark::State &, int, size_t);
const BenchFn kFns[M_COUNT] = { run_method<M_SCALAR>,    run_method<M_AVX2>, run_method<M_AVX512>,
                                run_method<M_BRANCHLESS>, run_method<M_STD>,  run_method<M_EYTZ> };

// ---- summary ---------------------------------------------------------------

struct Key {
    size_t n;
    int d, m;
};
std::map<std::string, Key> g_names;

struct Cell {
    double ns = -1;
    std::map<std::string, double> counters;
};
std::map<size_t, std::map<int, std::map<int, Cell>>> g_cells; // n -> dist -> method

int g_repetitions = 3;

class SummaryReporter : public benchmark::ConsoleReporter {
public:
    // Keeps, per cell, the fastest repetition (CPU ns): on a shared machine
    // the slow ones measure the neighbours. Shows only the "min" rows when
    // there are repetitions.
    void ReportRuns(const std::vector<Run> &runs) override
    {
        std::vector<Run> shown;
        for (const Run &r : runs) {
            bool is_min = r.run_type == Run::RT_Aggregate && r.aggregate_name == "min";
            if (g_repetitions <= 1 || is_min)
                shown.push_back(r);
            auto it = g_names.find(r.run_name.function_name);
            if (it == g_names.end() || r.error_occurred || (r.run_type != Run::RT_Iteration && !is_min))
                continue;
            Cell &c = g_cells[it->second.n][it->second.d][it->second.m];
            double ns = r.GetAdjustedCPUTime();
            if (c.ns < 0 || ns < c.ns)
                c.ns = ns;
            for (const auto &kv : r.counters)
                c.counters[kv.first] = kv.second.value;
        }
        ConsoleReporter::ReportRuns(shown);
    }
};

void print_summary(const std::vector<int> &methods, int lib_method)
{
    std::printf("\n");
    for (const auto &bn : g_cells) {
        std::printf("n = %zu keys; CPU ns per lookup; ratio = %s / branchless\n\n", bn.first,
                    kMethods[lib_method]);
        std::printf("| distribution |");
        for (int m : methods)
            std::printf(" %s |", kMethods[m]);
        std::printf(" ratio | probe | max err | model %% | build ns/key |\n|---|");
        for (size_t i = 0; i < methods.size() + 5; i++)
            std::printf("---:|");
        std::printf("\n");
        for (const auto &bd : bn.second) {
            const auto &row = bd.second;
            std::printf("| %s |", kDists[bd.first]);
            double lib = -1;
            const Cell *rc = nullptr;
            for (int m : methods) {
                auto it = row.find(m);
                if (it == row.end() || it->second.ns < 0) {
                    std::printf(" - |");
                    continue;
                }
                std::printf(" %.1f |", it->second.ns);
                if (m == lib_method) {
                    lib = it->second.ns;
                    rc = &it->second;
                }
            }
            auto bl = row.find(M_BRANCHLESS);
            if (lib > 0 && bl != row.end() && bl->second.ns > 0)
                std::printf(" %.2f |", lib / bl->second.ns);
            else
                std::printf(" - |");
            if (rc) {
                auto cv = [&](const char *k) {
                    auto f = rc->counters.find(k);
                    return f == rc->counters.end() ? -1.0 : f->second;
                };
                std::printf(" %.1f | %.0f | %.2f | %.1f |\n", cv("probe"), cv("max_err"),
                            cv("model_pct"), cv("build_ns_key"));
            } else {
                std::printf(" - | - | - | - |\n");
            }
        }
        std::printf("\n");
    }
}

std::vector<std::string> split(const std::string &s)
{
    std::vector<std::string> out;
    size_t a = 0;
    while (a <= s.size()) {
        size_t b = s.find(',', a);
        if (b == std::string::npos)
            b = s.size();
        if (b > a)
            out.push_back(s.substr(a, b - a));
        a = b + 1;
    }
    return out;
}

size_t parse_size(const std::string &s)
{
    char *end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (end && (*end == 'M' || *end == 'm'))
        v *= 1e6;
    else if (end && (*end == 'K' || *end == 'k'))
        v *= 1e3;
    return (size_t)v;
}

} // namespace

int main(int argc, char **argv)
{
    std::string sizes = "1000000,10000000,50000000", dists;
    if (const char *e = std::getenv("KYRO_INDEX_SIZES"))
        sizes = e;
    std::vector<char *> args;
    bool min_time = false, reps = false;
    static char default_min_time[] = "--benchmark_min_time=0.1";
    static char default_reps[] = "--benchmark_repetitions=3";
    for (int i = 0; i < argc; i++) {
        if (std::strncmp(argv[i], "--sizes=", 8) == 0)
            sizes = argv[i] + 8;
        else if (std::strncmp(argv[i], "--dists=", 8) == 0)
            dists = argv[i] + 8;
        else {
            if (std::strncmp(argv[i], "--benchmark_min_time", 20) == 0)
                min_time = true;
            if (std::strncmp(argv[i], "--benchmark_repetitions=", 24) == 0) {
                reps = true;
                g_repetitions = std::atoi(argv[i] + 24);
            }
            args.push_back(argv[i]);
        }
    }
    if (!min_time)
        args.push_back(default_min_time);
    if (!reps)
        args.push_back(default_reps);
    int ac = (int)args.size();
    benchmark::Initialize(&ac, args.data());
    if (benchmark::ReportUnrecognizedArguments(ac, args.data()))
        return 2;

    std::vector<int> methods = { M_SCALAR };
    if (probe_avx2())
        methods.push_back(M_AVX2);
    if (probe_avx512())
        methods.push_back(M_AVX512);
    methods.insert(methods.end(), { M_BRANCHLESS, M_STD, M_EYTZ });

    std::vector<std::string> want_dists = split(dists);
    for (const std::string &ss : split(sizes)) {
        size_t n = parse_size(ss);
        if (n < 2) {
            std::fprintf(stderr, "index_bench: bad size %s\n", ss.c_str());
            return 2;
        }
        for (int d = 0; d < kNumDists; d++) {
            if (!want_dists.empty() &&
                std::find(want_dists.begin(), want_dists.end(), kDists[d]) == want_dists.end())
                continue;
            for (int m : methods) {
                std::string name = std::string(kDists[d]) + "/" + std::to_string(n) + "/" + kMethods[m];
                g_names[name] = Key{ n, d, m };
                BenchFn f = kFns[m];
                benchmark::RegisterBenchmark(name.c_str(), [f, d, n](benchmark::State &st) {
                    f(st, d, n);
                })->ComputeStatistics("min", [](const std::vector<double> &v) {
                    return *std::min_element(v.begin(), v.end());
                });
            }
        }
    }
    std::printf("probe kernel chosen by the library: %s\n", probe_best_name());
    SummaryReporter rep;
    benchmark::RunSpecifiedBenchmarks(&rep);
    g.clear();
    const char *lib = probe_best_name();
    int lib_method = std::strcmp(lib, "avx512") == 0 ? M_AVX512
                     : std::strcmp(lib, "avx2") == 0 ? M_AVX2
                                                     : M_SCALAR;
    print_summary(methods, lib_method);
    benchmark::Shutdown();
    return 0;
}
