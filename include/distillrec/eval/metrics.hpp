// distillrec/eval/metrics.hpp
//
// Ranking metrics for one held-out item per user, from its 0-based rank r among the
// candidates (shared definitions of methods.md §5):
//   HR@K = [r < K],   NDCG@K = [r < K] / log2(r + 2),   MRR = 1 / (r + 1)  (untruncated)
// averaged over users. Ties are pessimistic everywhere in the library: r counts every other
// candidate whose score is >= the target's, so a model that scores everything equally ranks
// the target last, never first.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace distillrec::eval {

class RankingMetrics {
 public:
  explicit RankingMetrics(std::vector<Index> cutoffs = {1, 5, 10, 20}) : cutoffs_(std::move(cutoffs)) {
    for (Index k : cutoffs_) {
      if (k <= 0) throw ConfigError(detail::concat("metric cutoff must be positive, got ", k));
    }
    hits_.assign(cutoffs_.size(), 0.0);
    ndcg_.assign(cutoffs_.size(), 0.0);
  }

  /// Adds one user's 0-based rank (a negative rank counts as a miss at every cutoff, MRR 0).
  void add(Index rank) {
    ++count_;
    if (rank < 0) return;
    for (std::size_t i = 0; i < cutoffs_.size(); ++i) {
      if (rank < cutoffs_[i]) {
        hits_[i] += 1.0;
        ndcg_[i] += 1.0 / std::log2(static_cast<double>(rank) + 2.0);
      }
    }
    reciprocal_rank_ += 1.0 / (static_cast<double>(rank) + 1.0);
  }

  Index count() const { return count_; }
  const std::vector<Index>& cutoffs() const { return cutoffs_; }

  /// "HR@K", "NDCG@K" for every cutoff and "MRR", each averaged over the users added.
  std::map<std::string, double> values() const {
    std::map<std::string, double> out;
    const double n = count_ > 0 ? static_cast<double>(count_) : 1.0;
    for (std::size_t i = 0; i < cutoffs_.size(); ++i) {
      out["HR@" + std::to_string(cutoffs_[i])] = hits_[i] / n;
      out["NDCG@" + std::to_string(cutoffs_[i])] = ndcg_[i] / n;
    }
    out["MRR"] = reciprocal_rank_ / n;
    return out;
  }

 private:
  std::vector<Index> cutoffs_;
  std::vector<double> hits_, ndcg_;
  double reciprocal_rank_ = 0.0;
  Index count_ = 0;
};

/// Metrics of one evaluation, labelled with the split and the protocol that produced them.
struct EvaluationResult {
  std::string split;     // "valid" or "test"
  std::string protocol;  // "full" (all items, history masked) or "sampled-100" (legacy)
  std::string description;
  Index num_users = 0;
  std::map<std::string, double> metrics;

  /// A metric by name ("NDCG@10"); throws ConfigError naming the available ones.
  double value(const std::string& name) const {
    const auto it = metrics.find(name);
    if (it == metrics.end()) {
      std::string names;
      for (const auto& [key, v] : metrics) names += (names.empty() ? "" : ", ") + key;
      throw ConfigError("no metric \"" + name + "\" in " + protocol + " evaluation (have: " + names + ")");
    }
    return it->second;
  }

  nlohmann::json to_json() const {
    return nlohmann::json{{"split", split}, {"protocol", protocol}, {"description", description},
                          {"num_users", num_users}, {"metrics", metrics}};
  }

  static EvaluationResult from_json(const nlohmann::json& j) {
    EvaluationResult r;
    r.split = j.at("split").get<std::string>();
    r.protocol = j.at("protocol").get<std::string>();
    r.description = j.at("description").get<std::string>();
    r.num_users = j.at("num_users").get<Index>();
    r.metrics = j.at("metrics").get<std::map<std::string, double>>();
    return r;
  }

  /// "test [full: all 23715 items, history masked; 31013 users] HR@10 0.0812 NDCG@10 0.0433 MRR 0.0390"
  std::string summary(const std::vector<std::string>& names = {"HR@10", "NDCG@10", "MRR"}) const {
    std::string out = split + " [" + description + "]";
    for (const auto& name : names) {
      const auto it = metrics.find(name);
      if (it == metrics.end()) continue;
      char buffer[64];
      std::snprintf(buffer, sizeof(buffer), " %s %.4f", name.c_str(), it->second);
      out += buffer;
    }
    return out;
  }
};

}  // namespace distillrec::eval
