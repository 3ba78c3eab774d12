// serve_topk: top-K recommendations from a checkpoint of any of the library's models, one JSON
// line per query, through the serving engine (serve::Recommender).
//
//   serve_topk --checkpoint sasrec.safetensors < histories.txt
//   serve_topk --checkpoint llm_rec.safetensors --events --input events.jsonl --precision int8
//   serve_topk --checkpoint sasrec.safetensors --input histories.txt --bench
//
// Input (a file, or stdin when --input is absent or "-"), one query per line; blank lines and
// lines starting with '#' are skipped:
//   histories (default)  item ids separated by spaces or commas, oldest first:  "12 7 93"
//                        or a JSON object: {"user": "u1", "history": [12, 7, 93],
//                        "k": 5, "exclude": [4, 8]}  (user, k and exclude optional)
//   --events             one event per line, "user item" or {"user": "u1", "item": 93}: each user
//                        has a session (serve/session.hpp) that the event is appended to, and
//                        the session's top-K is printed after every event
// Output, one line per query: {"line": 3, "user": "u1", "items": [...], "scores": [...]}; a
// query that cannot be served (unknown item id, empty history, malformed line) prints
// {"line": 3, "error": "..."} and the next lines are served as usual (the exit code is then 2).
//
// --bench serves the whole input --repeats times without printing recommendations and prints
// one JSON summary: the machine, the scoring policy, per-query latency p50 / p99 and queries per
// second (events: each append and each top-K timed separately).
#include "distillrec/models/registry.hpp"
#include "distillrec/serve/recommender.hpp"

#include "../bench/bench_support.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <limits>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace distillrec;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string checkpoint, input = "-", precision = "fp32";
  Index k = 10, shortlist = 0;
  bool events = false, keep_history = false, bench = false;
  int repeats = 3, threads = 1;
};

/// One parsed input line.
struct Query {
  std::size_t line = 0;
  std::string user;
  Sequence items;    // the history, or the one event
  Index k = 0;       // 0: the default
  Sequence exclude;
  std::string error;  // the line could not be parsed
};

ItemId to_item(const nlohmann::json& value) {
  if (!value.is_number_integer()) throw ConfigError("item ids must be integers, got " + value.dump());
  const auto id = value.get<std::int64_t>();
  if (id < std::numeric_limits<ItemId>::min() || id > std::numeric_limits<ItemId>::max()) {
    throw ConfigError(detail::concat("item id ", id, " is out of range"));
  }
  return static_cast<ItemId>(id);
}

Sequence id_list(const nlohmann::json& value, const char* field) {
  if (!value.is_array()) throw ConfigError(std::string("\"") + field + "\" must be an array of item ids");
  Sequence out;
  for (const auto& v : value) out.push_back(to_item(v));
  return out;
}

// Plain text: integers separated by spaces or commas.
std::vector<std::int64_t> plain_numbers(const std::string& text) {
  std::string s = text;
  for (char& c : s) {
    if (c == ',' || c == '\t') c = ' ';
  }
  std::istringstream in(s);
  std::vector<std::int64_t> out;
  std::string token;
  while (in >> token) {
    std::size_t used = 0;
    std::int64_t v = 0;
    try {
      v = std::stoll(token, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != token.size()) throw ConfigError("\"" + token + "\" is not an item id");
    out.push_back(v);
  }
  return out;
}

Query parse(const std::string& text, std::size_t line, bool events) {
  Query q;
  q.line = line;
  if (!text.empty() && text[0] == '{') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(std::string("malformed JSON: ") + e.what());
    }
    if (j.contains("user")) q.user = j["user"].is_string() ? j["user"].get<std::string>() : j["user"].dump();
    if (events) {
      if (!j.contains("user") || !j.contains("item")) throw ConfigError("an event needs \"user\" and \"item\"");
      q.items.push_back(to_item(j["item"]));
    } else {
      if (!j.contains("history")) throw ConfigError("a query needs \"history\"");
      q.items = id_list(j["history"], "history");
    }
    if (j.contains("k")) {
      if (!j["k"].is_number_integer()) throw ConfigError("\"k\" must be an integer");
      q.k = j["k"].get<Index>();
      if (q.k < 1) throw ConfigError(detail::concat("k must be at least 1, got ", q.k));
    }
    if (j.contains("exclude")) q.exclude = id_list(j["exclude"], "exclude");
    return q;
  }
  if (events) {
    std::istringstream in(text);
    std::string item;
    if (!(in >> q.user >> item)) throw ConfigError("an event line is \"user item\"");
    const auto ids = plain_numbers(item);
    if (ids.size() != 1) throw ConfigError("an event line is \"user item\"");
    q.items.push_back(to_item(ids[0]));
    return q;
  }
  for (auto v : plain_numbers(text)) q.items.push_back(to_item(v));
  return q;
}

std::vector<Query> read_queries(const Options& o) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (o.input != "-") {
    file.open(o.input);
    if (!file) throw Error("serve_topk: cannot open " + o.input);
    in = &file;
  }
  std::vector<Query> queries;
  std::string text;
  std::size_t line = 0;
  while (std::getline(*in, text)) {
    ++line;
    const auto first = text.find_first_not_of(" \t\r");
    if (first == std::string::npos || text[first] == '#') continue;
    const auto last = text.find_last_not_of(" \t\r");
    try {
      queries.push_back(parse(text.substr(first, last - first + 1), line, o.events));
    } catch (const Error& e) {
      Query failed;
      failed.line = line;
      failed.error = e.what();
      queries.push_back(std::move(failed));
    }
  }
  return queries;
}

nlohmann::json result_line(const Query& q, const std::vector<serve::ScoredItem>& top) {
  nlohmann::json out{{"line", q.line}};
  if (!q.user.empty()) out["user"] = q.user;
  std::vector<ItemId> items;
  std::vector<float> scores;
  for (const auto& s : top) {
    items.push_back(s.item);
    scores.push_back(s.score);
  }
  out["items"] = items;
  out["scores"] = scores;
  return out;
}

template <typename Model>
int serve_all(std::shared_ptr<const Model> model, const Options& o) {
  serve::RecommenderConfig config;
  config.scoring.precision = serve::parse_precision(o.precision);
  config.scoring.shortlist = o.shortlist;
  config.threads = serve::ThreadPolicy::kSerial;  // one query at a time, on this thread
  const serve::Recommender<Model> recommender(model, config);
  auto queries = read_queries(o);
  using SessionT = decltype(recommender.start_session());

  std::vector<double> query_ms, append_ms;
  std::vector<serve::ScoredItem> top;
  std::size_t failed = 0;
  const int rounds = o.bench ? o.repeats : 1;
  for (int round = 0; round < rounds; ++round) {
    std::map<std::string, SessionT> sessions;
    for (auto& q : queries) {
      if (q.error.empty()) {
        serve::RecommendOptions options;
        options.k = q.k > 0 ? q.k : o.k;
        options.exclude_history = !o.keep_history;
        options.exclude = q.exclude.empty() ? nullptr : &q.exclude;
        try {
          if (o.events) {
            auto& session = sessions[q.user];
            const auto t0 = Clock::now();
            recommender.append(session, q.items[0]);
            const auto t1 = Clock::now();
            recommender.recommend_session(session, options, top);
            const auto t2 = Clock::now();
            append_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
            query_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
          } else {
            const auto t0 = Clock::now();
            recommender.recommend(q.items, options, top);
            query_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
          }
          if (!o.bench) std::cout << result_line(q, top).dump() << '\n';
          continue;
        } catch (const Error& e) {  // the engine stays usable: the next lines are served
          q.error = e.what();
        }
      }
      if (round == 0) ++failed;
      if (!o.bench) std::cout << nlohmann::json{{"line", q.line}, {"error", q.error}}.dump() << '\n';
    }
  }
  if (!o.bench) {
    std::cout.flush();
    return failed == 0 ? 0 : 2;
  }
  double total_ms = 0.0;
  for (double t : query_ms) total_ms += t;
  for (double t : append_ms) total_ms += t;
  nlohmann::json summary{{"machine", bench::machine_json()},
                         {"model", Model::kModelName},
                         {"checkpoint", o.checkpoint},
                         {"scoring", recommender.scorer().description()},
                         {"k", o.k},
                         {"queries", queries.size() - failed},
                         {"failed_lines", failed},
                         {"repeats", rounds},
                         {"top_k_ms", bench::p50_p99(query_ms)},
                         {"queries_per_second", total_ms > 0.0 ? 1000.0 * static_cast<double>(query_ms.size()) / total_ms : 0.0}};
  if (o.events) summary["append_ms"] = bench::p50_p99(append_ms);
  std::cout << summary.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Top-K recommendations from a checkpoint, one JSON line per history or event."};
  Options o;
  app.add_option("--checkpoint", o.checkpoint, "A checkpoint of any of the library's models (safetensors)")->required();
  app.add_option("--input", o.input, "Queries, one per line (default: stdin)");
  app.add_option("-k,--k", o.k, "Recommendations per query (a JSON query's \"k\" overrides it)")->check(CLI::PositiveNumber);
  app.add_flag("--events", o.events, "Lines are events \"user item\": per-user sessions, top-K after every event");
  app.add_option("--precision", o.precision, "Scoring: fp32, bf16 or int8")->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  app.add_option("--shortlist", o.shortlist, "int8: items re-scored in fp32 per query (0: max(40, 4 k))");
  app.add_flag("--keep-history", o.keep_history, "Do not leave the history's items out of the results");
  app.add_flag("--bench", o.bench, "Time the queries instead of printing them: one JSON summary");
  app.add_option("--repeats", o.repeats, "--bench: passes over the input")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    std::ios::sync_with_stdio(false);
    return models::with_checkpoint_model<float>(o.checkpoint, [&](auto model) -> int {
      using Model = typename decltype(model)::element_type;
      return serve_all<Model>(std::shared_ptr<const Model>(std::move(model)), o);
    });
  } catch (const std::exception& e) {
    std::cerr << "serve_topk: " << e.what() << "\n";
    return 1;
  }
}
