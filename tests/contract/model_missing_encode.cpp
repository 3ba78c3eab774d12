// A model that forgets encode(): training it must fail to COMPILE, with the model contract's
// message naming the missing piece (tests/CMakeLists.txt builds this file and checks the
// compiler's output). Not part of the normal build.
#include "distillrec/models/sasrec.hpp"
#include "distillrec/train/trainer.hpp"

namespace {

class WithoutEncode {
 public:
  using Scalar = float;
  using Config = distillrec::models::SASRecConfig;
  using Workspace = distillrec::models::SASRec<float>::Workspace;
  static constexpr const char* kModelName = "without_encode";

  explicit WithoutEncode(const Config& config) : inner_(config) {}
  const Config& config() const { return inner_.config(); }
  distillrec::Parameters<float>& parameters() { return inner_.parameters(); }
  const distillrec::Parameters<float>& parameters() const { return inner_.parameters(); }
  void initialize(distillrec::Rng& rng) { inner_.initialize(rng); }
  void after_load() { inner_.after_load(); }
  distillrec::ItemId num_items() const { return inner_.num_items(); }
  distillrec::Index max_length() const { return inner_.max_length(); }
  distillrec::nn::HeadWeights<float> output_weights() const { return inner_.output_weights(); }
  distillrec::nn::HeadGradients<float> output_gradients() { return inner_.output_gradients(); }
  distillrec::ConstMatrixMap<float> forward_train(const distillrec::data::TrainingBatch& batch, distillrec::Rng& rng,
                                                  Workspace& ws) const {
    return inner_.forward_train(batch, rng, ws);
  }
  void backward(const distillrec::ConstMatrixRef<float>& grad, Workspace& ws) { inner_.backward(grad, ws); }
  // encode() is missing.

 private:
  distillrec::models::SASRec<float> inner_;
};

}  // namespace

template class distillrec::train::Trainer<WithoutEncode>;

int main() {}
